"""User-facing errors: one clear line that names the fix."""

import errno


class AliceError(Exception):
    """An error caused by user input (a file, a setting, a value) that says how to fix it.

    The CLI prints these as one line and exits non-zero; nodes and the app show the message as is.
    """


# errno -> what to do, for OS errors that reach a command's top level (disk full, read-only folder, long names).
_OS_ADVICE = {
    errno.ENOSPC: "no space left on the device: free some space or write to another disk",
    errno.EDQUOT: "disk quota exceeded: free some space or write to another disk",
    errno.EROFS: "the file system is read-only: write to another folder",
    errno.EACCES: "permission denied: write to a folder you own",
    errno.EPERM: "operation not permitted: write to a folder you own",
    errno.ENAMETOOLONG: "the file name is too long: use a shorter name",
    errno.EFBIG: "the file is too large for this file system: write to another disk",
    errno.ENOENT: "no such file or folder: check the path",
    errno.EISDIR: "it is a folder: give a file name",
    errno.ENOTDIR: "a part of the path is not a folder: check the path",
}


def user_message(exc: BaseException) -> str | None:
    """The one line a command prints for an error a user can fix, or None for a bug (which keeps its traceback)."""
    if isinstance(exc, AliceError):
        return str(exc)
    if isinstance(exc, MemoryError):
        return "out of memory: lower the size, frame count or batch size, or use a quantised --precision"
    if isinstance(exc, OSError) and exc.errno in _OS_ADVICE:
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror or type(exc).__name__}{where}; {_OS_ADVICE[exc.errno]}"
    # Writers that wrap the OS error in their own type: safetensors ("... (os error 28)"), torch.save's zip writer
    # (a short write surfaces as "unexpected pos").
    text = str(exc)
    if "No space left on device" in text or "os error 28" in text or (
            "inline_container" in text and ("unexpected pos" in text or "file write failed" in text)):
        return f"writing a file failed part-way ({text.splitlines()[0][:120]}); {_OS_ADVICE[errno.ENOSPC]}"
    return None
