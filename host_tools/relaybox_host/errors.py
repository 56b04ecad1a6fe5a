"""The one exception the CLI turns into `relaybox: message` on stderr."""


class ToolError(Exception):
    """A failure the user can act on; the message says what to do next."""
