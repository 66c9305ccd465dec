"""Request guards that run before any view."""

from urllib.parse import unquote_to_bytes

from django.core.exceptions import BadRequest


class RejectNulMiddleware:
    """Answer 400 to a query string holding a NUL (`?q=%00`).

    PostgreSQL refuses NUL in text, so a search or an admin filter with one would otherwise
    raise in the database and show a 500; no field in this app may hold a NUL anyway.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        query = request.META.get("QUERY_STRING", "")
        if "\x00" in query or b"\x00" in unquote_to_bytes(query):
            # The query may hold a name or a phone number someone searched for: not logged.
            raise BadRequest("NUL in the query string")
        return self.get_response(request)
