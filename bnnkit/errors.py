"""The error bnnkit raises for a file it refuses to read (see :mod:`bnnkit.artifacts`)."""


class ArtifactError(ValueError):
    """A file bnnkit reads is missing, corrupt, of the wrong version or inconsistent."""
