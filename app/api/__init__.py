"""The HTTP data API: handlers answering from an :class:`app.api.context.ApiContext`, forwarding to a
key's owner, request models; registered on Faust's web server (views.py), reused by the serving process."""
