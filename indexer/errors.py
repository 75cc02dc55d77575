"""Errors caused by user input: the CLI prints them as one line, the app as a 4xx."""


class ActscopeError(Exception):
    """A problem the user can fix (bad path, wrong option, incompatible SAE...).

    The message is a complete sentence meant to be shown as is, without a traceback.
    """
