"""Where the report writes, and the rule that it never deletes or overwrites what it did not write.

* A markdown output (``leaderboard.md``) starts with :data:`MARK`; an existing file without
  it (or the header of files written before the mark) is someone else's and is refused.
* A plots folder holds :data:`PLOTS_MARK`; an existing non-empty folder without it is refused.
* A site folder holds :data:`SITE_MANIFEST`, the list of files the last render wrote: a new
  render deletes those files only (never the folder), and refuses a non-empty folder
  without the manifest.
* ``--results`` takes a run's output folder or its ``results/``; the outputs go into the
  run's folder, and only the repository's own ``results/`` renders the committed
  ``leaderboard.md`` and ``plots/`` (unless ``--output`` says otherwise).
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from .. import CmbenchError
from ..record import printable

MARK = "<!-- written by `cmbench report` from result files: regenerate it, do not edit it -->"
_LEGACY_HEAD = "# cmbench leaderboard\n\nRendered by `cmbench report`"  # files written before MARK
PLOTS_MARK = ".cmbench-plots"
SITE_MANIFEST = ".cmbench-site"


def _shown(p: Path) -> str:
    return printable(str(p))


def results_and_folder(arg: str | Path) -> tuple[Path, Path]:
    """(the results directory, the folder the report writes into) for ``--results ARG``: a
    run's output folder (it holds ``results/``) or a results directory itself (its outputs
    go beside it when it is named ``results``, else inside it)."""
    p = Path(arg)
    if not p.is_dir():
        what = "a file, not a directory" if p.exists() else "no such directory"
        raise CmbenchError(
            f"--results {_shown(p)}: {what}; give a run's output folder (--out of `cmbench run`) or its results/"
        )
    if (p / "results").is_dir():
        return p / "results", p
    return p, (p.parent if p.name == "results" else p)


def check_markdown(path: Path) -> None:
    """Refuse to overwrite a file the report did not write."""
    if path.is_dir():
        raise CmbenchError(f"--output {_shown(path)}: a directory; give a file name such as leaderboard.md")
    if not path.exists() and not path.is_symlink():
        return
    if path.is_symlink() or not path.is_file():
        raise CmbenchError(f"--output {_shown(path)}: not a regular file; give another --output")
    with open(path, "rb") as fh:
        head = fh.read(200).decode("utf-8", "replace")
    if not (head.startswith(MARK) or head.startswith(_LEGACY_HEAD)):
        raise CmbenchError(
            f"--output {_shown(path)}: exists and was not written by cmbench report; it would be "
            "overwritten: give another --output, or move the file away"
        )


def claim_plots(folder: Path) -> None:
    """A folder the plots may be written into (made and marked here when new or empty)."""
    _claim(folder, PLOTS_MARK, "--plots")


def _claim(folder: Path, mark: str, flag: str) -> None:
    if folder.exists() and not folder.is_dir():
        raise CmbenchError(f"{flag} {_shown(folder)}: a file, not a directory; give a folder")
    if folder.is_dir() and not (folder / mark).is_file():
        if any(folder.iterdir()):
            raise CmbenchError(
                f"{flag} {_shown(folder)}: a folder cmbench did not write (no {mark} in it) and not empty; "
                "its files would be overwritten: give a new or empty folder"
            )
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / mark
    if not marker.exists():
        marker.write_text("written by `cmbench report`; its files are regenerated\n")


def clear_site(site: Path) -> None:
    """Make ``site`` ready for a new render: files the last render listed are deleted (and the
    folders that held only them); anything else stays. A folder that holds other things and no
    manifest is refused."""
    _claim(site, SITE_MANIFEST, "--site")
    listed = (site / SITE_MANIFEST).read_text(encoding="utf-8", errors="replace").splitlines()[1:]
    root = site.resolve()
    for line in listed:
        rel = PurePosixPath(line)
        if not line or rel.is_absolute() or ".." in rel.parts:
            continue  # never a path outside the site
        f = site / rel
        if f.is_file() and not f.is_symlink() and f.resolve().is_relative_to(root):
            f.unlink()
            for d in f.parents:
                if d == site or not d.resolve().is_relative_to(root):
                    break
                try:
                    d.rmdir()  # only once empty
                except OSError:
                    break


def write_manifest(site: Path, files: list[Path]) -> None:
    rels = sorted({f.relative_to(site).as_posix() for f in files})
    (site / SITE_MANIFEST).write_text(
        "written by `cmbench report --site`; the files it lists are replaced by the next render\n"
        + "".join(r + "\n" for r in rels),
        encoding="utf-8",
    )


def is_default_results(results: Path) -> bool:
    """Whether ``results`` is ./results, whose report is the committed leaderboard.md and
    plots/ (any other results directory renders into its run's folder)."""
    return results.resolve() == (Path.cwd() / "results").resolve()


def default_output(results: Path, folder: Path) -> Path:
    return Path("leaderboard.md") if is_default_results(results) else folder / "leaderboard.md"


__all__ = ["results_and_folder", "check_markdown", "claim_plots", "clear_site", "write_manifest", "MARK"]
