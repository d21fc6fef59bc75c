"""One exception family for everything a user can get wrong; the CLI prints it as one line."""


class LmscopeError(Exception):
    """Base class: bad input or an unsupported situation, explained in one line."""


class SiteError(LmscopeError):
    """An unknown site name, a layer out of range, or an operation the site does not allow."""


class EditError(LmscopeError):
    """An edit that cannot apply: wrong vector size or dtype, index out of range."""


class ModelSpecError(LmscopeError):
    """A model spec that cannot be loaded."""


class InputError(LmscopeError):
    """Bad prompt or token input (empty prompt, token id out of range, ...)."""
