"""Writes to care rules that more than one place makes."""

from datetime import datetime

from campaigns.models import Rule


def rule_note_switch_on(rule: Rule, *, was_enabled: bool, now: datetime) -> None:
    """Set `rule.enabled_since` to `now` when the rule is being switched on (created enabled, or
    enabled where it was not); the caller saves the rule. The dashboard compares the weeks
    after this moment with those before it, so a rule that stays on keeps its first time."""
    if rule.enabled and not was_enabled:
        rule.enabled_since = now
