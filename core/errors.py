"""The one exception type for problems the user can fix.

A `UserError` carries a single sentence that names what to change (a flag, a file, a folder).
Entry points print it as is, record it in a `failed` event and exit with status 2; anything else
that escapes is a bug or an environment failure and exits with status 1.
"""


class UserError(Exception):
    """A problem in the user's input, told in one sentence that names what to fix."""


EXIT_FAILED = 1
EXIT_USER_ERROR = 2
