"""The one exception type that means "the user asked for something we cannot do".

Anything raised as `UserError` reaches the terminal as a single line and exit code 2;
every other exception is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input (reference, recipe, path, missing package...)."""


def missing_package(package: str, purpose: str, install: str | None = None) -> UserError:
    command = install or f"pip install {package}"
    return UserError(f"{purpose} needs the package '{package}', which is not installed: run `{command}`")


def first_line(exc: BaseException) -> str:
    """What an exception from a library says, in one line for an `error:` line (its type if it says nothing)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
