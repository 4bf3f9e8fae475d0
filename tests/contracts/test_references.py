"""Every reference in code and docs to a file, a docs/*.md heading or a README section resolves.

The repository's own .py files (their whole text: comments, docstrings, help and error messages) and its Markdown
(README.md, docs/*.md, results/*.md) are read with each line break, and the indentation and `#` after it, folded
to one space, so that a reference wrapped over two lines reads as one. Checked:

- file paths: a word starting with a top-level folder of the repository (`docs/performance.md`,
  `results/cpu/composition_M1_M2_y1-1_y2-2_g20.png`, `checkpoints/`) or naming a top-level file
  (`train_diffusion.py`) must be a file or folder of the repository, or a module and a name it defines
  (`samplers/heun_sampler.reverse_sde_grid`); another path ending in .py (a module's old place), one of its
  files; a bare file name ending in .py, the name of one of its .py files. Not references: templates (`<`, `{`,
  `*`, `...`, an upper-case placeholder such as `results/SCALE`), where a command writes (after `--out-dir`,
  `--run-dir`, `--export-dir`, `--ckpt-dir`, `--out`), and the files a run writes into a tracked folder that git
  ignores by their kind (`results/cpu/*.pt`). A path after `<commit>:` (`git show b777564:results/cpu_v10.md`)
  names history: that commit must hold it, and the commit of a plain `git show <commit>` must exist (both
  checked where the clone has its history).
- Markdown links `[text](path)` and `[text](path#anchor)`: the path is relative to the document's folder, and
  the anchor must be a heading of the target under GitHub's rules (lower case, spaces to `-`, punctuation other
  than `-` and `_` dropped, `-1`, `-2` ... after repeats).
- named sections: `docs/<file>.md, "<Heading>"`, `docs/<file>.md ("<Heading>")`, `README, "<Section>"`,
  `README ("<Section>")`, `README's "<Section>"` and `README's section "<Section>"`: a heading of that document
  must read the quoted text, or start with it and go on after a word's end (`"Results"` names
  `## Results (CPU scale)`); case, Markdown code marks and trailing punctuation aside. A renamed heading fails.
- numbered sections: `docs/reference.md §6`, `docs/reference.md §1, §7`, `docs/reference.md §1–§8`, and in a
  document a bare section sign (its own section, as docs/reference.md writes them): the document must have a
  heading starting with that number (`## §N. ...`). In a .py file a bare section sign, with no document before
  it, fails.
"""
import functools
import re
import subprocess
from collections import Counter
from pathlib import Path

from repository import REPO, repository_files

FILES = repository_files()
DIRS = {str(parent) for name in FILES for parent in Path(name).parents if str(parent) != "."}
TOP_FOLDERS = sorted({name.split("/")[0] for name in FILES if "/" in name and not name.startswith(".")})
TOP_FILES = sorted(name for name in FILES if "/" not in name and not name.startswith("."))
SCANNED = [name for name in FILES if name.endswith(".py")
           or name == "README.md" or re.fullmatch(r"(docs|results)/[^/]+\.md", name)]

# A line break, the indentation after it and a comment's `#`: one space.
FOLD = {".py": re.compile(r"\n[ \t]*(?:#[ \t]*)?"), ".md": re.compile(r"\n[ \t]*")}
PATH_CHARS = r"[\w./<>{}*\-]"
PATH = re.compile(rf"(?<![\w./\-])(?P<path>(?:\.\./)*(?:{'|'.join(map(re.escape, TOP_FOLDERS))})/{PATH_CHARS}*"
                  rf"|(?:{'|'.join(map(re.escape, TOP_FILES))})(?![\w\-]))")
COMMIT_PATH = re.compile(r"(?<![\w./\-])(?P<commit>[0-9a-f]{7,40}):(?P<path>[\w.\-]+(?:/[\w.\-]+)*/?)")
GIT_SHOW = re.compile(r"git show (?P<commit>[0-9a-f]{7,40})\b(?!:)")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\((?P<target>[^()\s]+)\)")
DOCUMENT = r"README(?:\.md)?|(?:[\w.\-]+/)*[\w\-]+\.md"
SECTION = re.compile(rf"(?<![\w/.\-])(?P<doc>{DOCUMENT})(?:\]\([^()\s]*\))?"
                     rf"(?:'s section |'s |, | \()\"(?P<heading>[^\"]{{1,120}})\"")
NUMBERED = re.compile(rf"(?<![\w/.\-])(?P<doc>{DOCUMENT})(?:\]\([^()\s]*\))? "
                      rf"(?P<numbers>§\d+(?:(?:, |–|-| and )§\d+)*)")
SECTION_SIGN = re.compile(r"§(\d+)")
HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$")
FENCE = re.compile(r"^[ \t]*(```|~~~)")
PLACEHOLDER = re.compile(r"[<>{}*]|\.\.\.|/[A-Z][A-Z_]+(?:/|$)")
WRITES = re.compile(r"--(?:out|out-dir|run-dir|export-dir|ckpt-dir)[ =]$")  # a flag naming where a command writes
MODULE = re.compile(r"(?<![\w./\-\\])(?P<quote>\"?)(?P<name>(?:[A-Za-z_]\w*/)*[A-Za-z_]\w*\.py)\b")
PY_NAMES = {Path(name).name for name in FILES if name.endswith(".py")}


def fold(name: str):
    """The file's text with line breaks folded, and each of its characters' line numbers."""
    text = (REPO / name).read_text(encoding="utf-8")
    fold_pattern = FOLD[".py" if name.endswith(".py") else ".md"]
    pieces, lines, position, line = [], [], 0, 1
    for match in fold_pattern.finditer(text):
        pieces += [text[position:match.start()], " "]
        lines += [line] * (match.start() - position + 1)
        line, position = line + 1, match.end()
    pieces.append(text[position:])
    lines += [line] * (len(text) - position)
    return "".join(pieces), lines


@functools.lru_cache(maxsize=None)
def headings(name: str) -> list:
    """The Markdown headings of a document, outside code blocks, as written."""
    found, fenced = [], False
    for line in (REPO / name).read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced and (match := HEADING.match(line)):
            found.append(match.group(2))
    return found


def plain(text: str) -> str:
    """A heading or quoted section name for comparison: no code marks or emphasis, one space, lower case, no
    trailing punctuation."""
    return re.sub(r"\s+", " ", re.sub(r"[`*]", "", text)).strip().rstrip(".,:;!?").lower()


def anchors(name: str) -> set:
    """GitHub's anchors for a document's headings."""
    seen, found = Counter(), set()
    for heading in headings(name):
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading: its text
        slug = re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")
        found.add(slug if not seen[slug] else f"{slug}-{seen[slug]}")
        seen[slug] += 1
    return found


def names_heading(name: str, quoted: str) -> bool:
    """Whether a heading of the document reads `quoted`, or starts with it and goes on after a word's end."""
    quoted = plain(quoted)
    return any(heading == quoted or (heading.startswith(quoted) and not re.match(r"\w", heading[len(quoted)]))
               for heading in map(plain, headings(name)))


def numbered_heading(name: str, number: str) -> bool:
    return any(re.match(rf"§?{number}\.\s", heading) for heading in headings(name))


def exists(path: str) -> bool:
    return path in FILES or path.rstrip("/") in DIRS


def resolve(path: str, base: str) -> str:
    """A relative path as a path from the repository root, or None where it climbs out of the repository."""
    parts = []
    for part in (Path(base) / path).parts:
        if part == "..":
            if not parts:
                return None
            parts.pop()
        elif part != ".":
            parts.append(part)
    return "/".join(parts) + ("/" if path.endswith("/") else "")


def document(reference: str, name: str) -> str:
    """The document a section reference names, seen from file `name`: README, a path from the root, or a
    document beside `name`."""
    if reference.startswith("README"):
        return "README.md"
    beside = resolve(reference, str(Path(name).parent))
    return reference if reference in FILES or beside not in FILES else beside


def run_output(path: str) -> bool:
    """A file a run writes into a tracked folder that git ignores by its kind (`results/**/*.pt`,
    `checkpoints/*_train_state.pth`): an output, not a reference. What git ignores by folder (`results/*`: the
    runs that left the tree) is not."""
    if str(Path(path).parent) not in DIRS:
        return False
    answer = subprocess.run(["git", "check-ignore", "-v", "--no-index", path], cwd=REPO, capture_output=True,
                            text=True).stdout
    pattern = answer.split("\t")[0].split(":", 2)[-1] if answer else ""
    return bool(re.fullmatch(r"\*[^/*]+", pattern.rsplit("/", 1)[-1]))


def module_name(path: str) -> bool:
    """`samplers/heun_sampler.reverse_sde_grid`: a module of the repository and a name it defines."""
    module, _, attribute = path.rpartition(".")
    return (bool(module) and f"{module}.py" in FILES and re.search(
        rf"^\s*(?:def|class)\s+{re.escape(attribute)}\b|^{re.escape(attribute)}\s*[:=]",
        (REPO / f"{module}.py").read_text(encoding="utf-8"), re.MULTILINE) is not None)


def missing_objects(objects: list) -> set:
    """Those of `<commit>` and `<commit>:<path>` the repository does not hold; none where the clone is shallow."""
    shallow = subprocess.run(["git", "rev-parse", "--is-shallow-repository"], cwd=REPO, capture_output=True,
                             text=True).stdout.strip()
    if not objects or shallow != "false":
        return set()
    answer = subprocess.run(["git", "cat-file", "--batch-check"], cwd=REPO, capture_output=True, text=True,
                            input="".join(f"{name}\n" for name in objects), check=True).stdout.splitlines()
    return {name for name, line in zip(objects, answer) if line.endswith(" missing")}


def check_references():
    """(failures, counts): each failure `file:line: reference: why`; counts by kind of reference."""
    failures, counts, history = [], Counter(), []
    for name in SCANNED:
        text, lines = fold(name)

        def where(match, name=name, lines=lines):
            return f"{name}:{lines[match.start()]}"

        is_markdown = name.endswith(".md")
        consumed = []  # spans already checked as links or history: their paths are not checked again

        for match in COMMIT_PATH.finditer(text):
            counts["history"] += 1
            consumed.append(match.span())
            history.append((f"{match['commit']}:{match['path'].rstrip('/.')}", where(match), match[0]))
        for match in GIT_SHOW.finditer(text):
            counts["history"] += 1
            history.append((f"{match['commit']}^{{commit}}", where(match), match[0]))

        for match in LINK.finditer(text) if is_markdown else []:
            target = match["target"]
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            counts["link"] += 1
            consumed.append(match.span("target"))
            path, _, anchor = target.partition("#")
            resolved = resolve(path, str(Path(name).parent)) if path else name
            if resolved is None or not exists(resolved):
                failures.append(f"{where(match)}: ({target}): no file or folder {resolved or path} in the repository")
            elif anchor and (not resolved.endswith(".md") or anchor not in anchors(resolved)):
                failures.append(f"{where(match)}: ({target}): {resolved} has no heading with anchor #{anchor}")

        for match in PATH.finditer(text):
            if any(start <= match.start() < end for start, end in consumed):
                continue
            if PLACEHOLDER.search(match["path"]) or WRITES.search(text, max(0, match.start() - 20), match.start()):
                continue
            path = match["path"].rstrip(".,:;")
            counts["path"] += 1
            resolved = resolve(path, str(Path(name).parent) if path.startswith("../") else "")
            if resolved is not None and (exists(resolved) or run_output(resolved) or module_name(resolved)):
                continue
            failures.append(f"{where(match)}: {path}: no such file or folder in the repository")

        for match in MODULE.finditer(text):
            module = match["name"]
            if (module in TOP_FILES or module.split("/")[0] in TOP_FOLDERS
                    or (match["quote"] and name.startswith("tests/"))):
                continue  # a path checked above; a test's made-up file
            counts["module"] += 1
            if "/" in module and module not in FILES:  # a module's old place
                failures.append(f"{where(match)}: {module}: no such file in the repository")
            elif "/" not in module and module not in PY_NAMES:
                failures.append(f"{where(match)}: {module}: no .py file of the repository has that name")

        for match in SECTION.finditer(text):
            if PLACEHOLDER.search(match["heading"]):
                continue
            counts["section"] += 1
            target = document(match["doc"], name)
            if target not in FILES:
                failures.append(f"{where(match)}: {match[0]}: no document {match['doc']}")
            elif not names_heading(target, match["heading"]):
                failures.append(f"{where(match)}: {match[0]}: {target} has no heading \"{match['heading']}\"")

        numbered = []  # spans of the section signs after a document's name
        for match in NUMBERED.finditer(text):
            target = document(match["doc"], name)
            for number in SECTION_SIGN.finditer(match["numbers"]):
                counts["numbered"] += 1
                numbered.append(match.start("numbers") + number.start())
                if target not in FILES:
                    failures.append(f"{where(match)}: {match['doc']} {number[0]}: no document {match['doc']}")
                elif not numbered_heading(target, number[1]):
                    failures.append(f"{where(match)}: {match['doc']} {number[0]}: {target} has no section "
                                    f"{number[0]}")
        for match in SECTION_SIGN.finditer(text):
            if match.start() in numbered or re.search(r"(^|\s)#+ $", text[max(0, match.start() - 8):match.start()]):
                continue  # named above, or a heading's own number
            counts["numbered"] += 1
            if not is_markdown:
                failures.append(f"{where(match)}: {match[0]}: a section of which document? "
                                f"(write docs/reference.md {match[0]})")
            elif not numbered_heading(name, match[1]):
                failures.append(f"{where(match)}: {match[0]}: {name} has no section {match[0]}")

    missing = missing_objects([name for name, _, _ in history])
    failures += [f"{where}: {written}: git holds no {name}" for name, where, written in history if name in missing]
    return failures, counts


def test_every_reference_resolves():
    failures, counts = check_references()
    assert all(counts[kind] for kind in ["path", "link", "section", "numbered", "history"]), counts
    assert not failures, f"{len(failures)} references do not resolve:\n" + "\n".join(failures)
