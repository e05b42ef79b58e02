"""Input paths that are local or URIs (`file://`, `gs://`, `s3://`, `hdfs://`,
whatever `pyarrow.fs.FileSystem.from_uri` opens): globbing, reading, sizes.

A local path goes through the os module as before; a URI through pyarrow's
filesystem for its scheme, and the files found keep their scheme, so every later
read goes back through it. Tested: local paths and `file://` URIs only.
"""

import glob
import os
import re

_GLOB_CHARS = set("*?[")


def is_uri(path) -> bool:
  return isinstance(path, str) and "://" in path


def _split(uri: str) -> tuple[object, str, str]:
  """(pyarrow filesystem, path inside it, the prefix that turns such a path back
  into a URI: `gs://`, `file://`)."""
  import pyarrow.fs  # noqa: PLC0415 - only URIs need it

  fs, inner = pyarrow.fs.FileSystem.from_uri(uri)
  prefix = uri[: len(uri) - len(inner)] if uri.endswith(inner) else uri.split("://")[0] + "://"
  return fs, inner, prefix


def glob_root(pattern: str):
  """The longest leading directory of a glob without glob characters (a literal
  file: its directory): a Path locally, a string for a URI."""
  if is_uri(pattern):
    head = pattern[
      : min((pattern.find(c) for c in _GLOB_CHARS if c in pattern), default=len(pattern))
    ]
    return head[: head.rfind("/")]
  import pathlib  # noqa: PLC0415

  parts = pathlib.Path(pattern).parts
  prefix = []
  for part in parts:
    if _GLOB_CHARS & set(part):
      break
    prefix.append(part)
  if len(prefix) == len(parts):  # a literal file path: its directory is the root
    prefix = prefix[:-1]
  return pathlib.Path(*prefix) if prefix else pathlib.Path(".")


def common_root(roots: list):
  """The deepest directory holding every root."""
  if not any(is_uri(str(r)) for r in roots):
    import pathlib  # noqa: PLC0415

    return pathlib.Path(os.path.commonpath(roots))
  common = os.path.commonprefix([str(r) + "/" for r in roots])
  return common[: common.rfind("/")]


def _regex(pattern: str) -> re.Pattern:
  """A glob (`**` any directories, `*` / `?` within one) as a regex over paths."""
  out, i = "", 0
  while i < len(pattern):
    if pattern.startswith("**/", i):
      out, i = out + "(?:.*/)?", i + 3
    elif pattern.startswith("**", i):
      out, i = out + ".*", i + 2
    elif pattern[i] == "*":
      out, i = out + "[^/]*", i + 1
    elif pattern[i] == "?":
      out, i = out + "[^/]", i + 1
    elif pattern[i] == "[":
      end = pattern.find("]", i + 1)
      out, i = (out + "\\[", i + 1) if end < 0 else (out + pattern[i : end + 1], end + 1)
    else:
      out, i = out + re.escape(pattern[i]), i + 1
  return re.compile(out + r"\Z")


def glob_files(pattern: str) -> list[str]:
  """The files a glob matches (unsorted): os glob locally, a listing of the
  glob's fixed leading directory through pyarrow for a URI."""
  if not is_uri(pattern):
    return [p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p)]
  import pyarrow.fs  # noqa: PLC0415

  fs, inner, prefix = _split(pattern)
  if not _GLOB_CHARS & set(inner):
    info = fs.get_file_info(inner)
    return [pattern] if info.type == pyarrow.fs.FileType.File else []
  parts = inner.split("/")
  fixed = next(i for i, part in enumerate(parts) if _GLOB_CHARS & set(part))
  base, wanted = "/".join(parts[:fixed]), _regex(inner)
  selector = pyarrow.fs.FileSelector(base, recursive=True, allow_not_found=True)
  files = fs.get_file_info(selector)
  return [
    prefix + f.path for f in files if f.type == pyarrow.fs.FileType.File and wanted.match(f.path)
  ]


def is_dir(path: str) -> bool:
  if not is_uri(path):
    return os.path.isdir(path)
  import pyarrow.fs  # noqa: PLC0415

  fs, inner, _ = _split(path)
  return fs.get_file_info(inner).type == pyarrow.fs.FileType.Directory


def read_bytes(path) -> bytes:
  if not is_uri(path):
    with open(path, "rb") as f:
      return f.read()
  fs, inner, _ = _split(path)
  with fs.open_input_stream(inner) as f:
    return f.read()


def open_input(path):
  """A pyarrow random-access file of a URI (for Parquet and Arrow readers)."""
  fs, inner, _ = _split(path)
  return fs.open_input_file(inner)


def size(path) -> int:
  if not is_uri(path):
    return os.path.getsize(path)
  fs, inner, _ = _split(path)
  return fs.get_file_info(inner).size


def relative(path, root) -> str:
  """`path` relative to `root`, posix-style (the eval split hashes it)."""
  if is_uri(str(path)):
    return str(path)[len(str(root)) :].lstrip("/")
  import pathlib  # noqa: PLC0415

  return pathlib.Path(path).relative_to(root).as_posix()
