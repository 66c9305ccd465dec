"""The admin's link to the dashboard, shown only to those who may open it."""

from django import template
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser

from dashboard.views import may_see_dashboard

register = template.Library()


@register.simple_tag
def dashboard_allowed(user: AbstractBaseUser | AnonymousUser) -> bool:
    return may_see_dashboard(user)
