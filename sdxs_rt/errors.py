"""Errors users can act on: one clear sentence each, and the exit code of CONVENTIONS.md."""

from __future__ import annotations

EXIT_OK = 0
EXIT_UNEXPECTED = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_DEVICE = 4
EXIT_OUT_OF_MEMORY = 5
EXIT_ENGINE = 6
EXIT_REPLAY_DIFFERS = 7  # `sdxs-rt info --replay`: the replayed pixels differ from the image's
EXIT_INTERRUPTED = 130


class SdxsError(Exception):
    """Base class: the message is one sentence meant for the user."""

    exit_code = EXIT_UNEXPECTED


class UsageError(SdxsError, ValueError):
    """Bad parameters: sizes, steps, guidance, scheduler names, output paths."""

    exit_code = EXIT_USAGE


class ModelNotFoundError(SdxsError, FileNotFoundError):
    """A model folder, hub repo or file that does not exist (or is not cached when offline)."""

    exit_code = EXIT_NOT_FOUND


class ModelFormatError(SdxsError):
    """A model that exists but whose files or layout are not ones sdxs-rt understands."""

    exit_code = EXIT_NOT_FOUND


class DeviceError(SdxsError):
    """The requested device, GPU or execution provider is not available."""

    exit_code = EXIT_DEVICE


class OutOfMemoryError(SdxsError, MemoryError):
    exit_code = EXIT_OUT_OF_MEMORY


class EngineError(SdxsError):
    """Export or engine build/load failure."""

    exit_code = EXIT_ENGINE


class OutputExistsError(UsageError, FileExistsError):
    """The output file exists and --overwrite was not given."""
