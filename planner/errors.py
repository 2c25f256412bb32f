"""Errors of planning: bad configuration, incompatible inputs, invalid plan files."""


class PlanError(Exception):
    """Planning cannot proceed; the message names the file and what is wrong."""


class ConfigError(PlanError):
    """A compact config (or a flag) has a wrong value."""


class UsageError(PlanError):
    """The command asks for something the inputs cannot have (e.g. --max-blobs above the format's limit)."""


class PlanFileError(PlanError):
    """A plan file is unreadable, invalid (with the key path) or stale."""


class ChunkLostError(PlanError):
    """Decisions under which a chunk some occurrence references would not be in the new image."""

    def __init__(self, blob_id: str, occurrence: int, compressed_offset: int):
        self.blob_id = blob_id
        self.occurrence = occurrence
        self.compressed_offset = compressed_offset
        super().__init__(
            f"blob {blob_id} is deleted, but occurrence {occurrence} needs its chunk at compressed "
            f"offset {compressed_offset} and no kept or new blob provides it"
        )
