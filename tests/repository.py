"""What the tests that read the project's own files walk: the files a clone holds, never an environment, a cache or
an ignored folder that happens to sit in the checkout (README's set-up makes .venv/ there)."""
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def repository_files() -> list:
    """The tracked files, and those not yet committed that git does not ignore (a commit of this working tree would
    add them), as paths relative to the repository root."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout
    return sorted(name for name in set(listed.split("\0")) if name and (REPO / name).is_file())


def python_sources(exclude_folders=()) -> list:
    """Absolute paths of the repository's .py files, outside the top-level folders `exclude_folders`."""
    return [REPO / name for name in repository_files()
            if name.endswith(".py") and Path(name).parts[0] not in exclude_folders]
