"""What a run reads: its sources, their files and the deterministic train / eval
split; trainer/pipeline.py makes packed grain batches of them.

Sources (`data.format`): text files (a file is one document), JSONL (a line is
one document: the string under `data.field`), Parquet and Arrow files (a row is
one document: its column `data.field`; read a row group / record batch at a
time, trainer/columnar.py), all by glob; a Hugging Face `datasets` directory
written by `save_to_disk` (its Arrow files); or a directory of tokenized
ArrayRecord shards written by `scripts/prepare_data.py` (a record is one
document). `data.sources` mixes several such sources by weight
(trainer/mixture.py); each is read as `data.path` alone would be. Tokenizers
(`data.tokenizer`): `byte` (UTF-8 bytes 0..255, EOS 256) or a local
`tokenizer.json` (trainer/documents.py).
"""

import hashlib
import json
import os
import pathlib
import sysconfig

from trainer import columnar, mixture, paths
from trainer.documents import data_tokenizer, file_format

FORMATS = ("auto", "text", "jsonl", *columnar.FORMATS, "arrayrecord")
META_FILE = "meta.json"  # a prepared directory's description (scripts/prepare_data.py)

_EXCLUDED_DIRS = ("site-packages", "dist-packages")


def default_corpus_files() -> list[pathlib.Path]:
  """The interpreter's stdlib *.py files, sorted by path relative to the stdlib root."""
  root = pathlib.Path(sysconfig.get_paths()["stdlib"])
  rel_paths = []
  for dirpath, dirnames, filenames in os.walk(root):
    # Installed packages differ per machine; prune them from the walk.
    dirnames[:] = [d for d in dirnames if d not in _EXCLUDED_DIRS]
    rel_dir = pathlib.Path(dirpath).relative_to(root)
    rel_paths += [(rel_dir / f).as_posix() for f in filenames if f.endswith(".py")]
  return [root / p for p in sorted(rel_paths)]


def _is_eval(rel_path: str, eval_fraction: float) -> bool:
  h = int(hashlib.sha1(rel_path.encode("utf-8")).hexdigest(), 16)
  return h % 10_000 < eval_fraction * 10_000


def split_files(files, root, eval_fraction: float) -> tuple[list, list]:
  """(train, eval) item lists; eval iff sha1(relative posix path, ":unit" added for a
  Parquet / Arrow unit) % 10_000 < eval_fraction * 10_000."""
  if not 0.0 <= eval_fraction <= 1.0:
    raise ValueError(f"data.eval_fraction={eval_fraction!r} must be in [0, 1]")
  root = root if paths.is_uri(root) else pathlib.Path(root)
  train, evals = [], []
  for f in files:
    if isinstance(f, tuple):  # (path, unit) of a Parquet / Arrow file
      rel = f"{paths.relative(f[0], root)}:{f[1]}"
    else:
      rel = paths.relative(f, root)
    (evals if _is_eval(rel, eval_fraction) else train).append(f)
  return train, evals


def resolve_files(data_cfg) -> tuple[list[pathlib.Path], pathlib.Path]:
  """(files sorted by relative path, root) for data_cfg.path ("" = stdlib corpus):
  a glob, or several globs / files separated by commas; for a prepared directory,
  its ArrayRecord shards; for a `save_to_disk` directory, its Arrow files."""
  check(data_cfg)
  path = data_cfg.path
  if path == "":
    return default_corpus_files(), pathlib.Path(sysconfig.get_paths()["stdlib"])
  if is_prepared(data_cfg):
    root = pathlib.Path(os.path.expanduser(path))
    return sorted(root.glob("*.array_record")), root
  pattern = os.path.expanduser(path)
  arrow = columnar.dataset_files(pattern) if os.path.isdir(pattern) else None
  if arrow is not None:  # a Hugging Face `save_to_disk` directory
    return arrow, pathlib.Path(pattern)
  patterns = [pattern]
  if "," in pattern and not os.path.exists(pattern):  # files / globs: under their common root
    patterns = [p.strip() for p in pattern.split(",") if p.strip()]
    patterns = [p if paths.is_uri(p) else os.path.abspath(p) for p in patterns]
  roots = [paths.glob_root(p) for p in patterns]
  root = paths.common_root(roots) if len(roots) > 1 else roots[0]
  found = {p for pat in patterns for p in paths.glob_files(pat)}
  files = [p if paths.is_uri(p) else pathlib.Path(p) for p in found]
  if not files and paths.is_dir(pattern):
    raise ValueError(
      f"data.path={path!r} is a directory without {META_FILE}; give a glob of its files "
      f"(e.g. {os.path.join(path, '**', '*.txt')!r}) or prepare it with scripts/prepare_data.py"
    )
  if not files:
    raise ValueError(
      f"data.path={path!r} matches no files; point it at existing text or JSONL files, "
      "a directory from scripts/prepare_data.py, or leave it empty for the default corpus"
    )
  files.sort(key=lambda f: paths.relative(f, root))
  return files, root


def prepared_meta(data_cfg) -> dict:
  """A prepared directory's meta.json."""
  return json.loads((pathlib.Path(os.path.expanduser(data_cfg.path)) / META_FILE).read_text())


def is_prepared(data_cfg) -> bool:
  """Whether data.path is a directory written by scripts/prepare_data.py."""
  if not data_cfg.path or data_cfg.format not in ("auto", "arrayrecord"):
    return False
  return (pathlib.Path(os.path.expanduser(data_cfg.path)) / META_FILE).is_file()


def source_configs(data_cfg) -> list:
  """Each source's data config: data.sources' (trainer/mixture.py), or data itself."""
  return [s.cfg for s in mixture.sources(data_cfg)] if data_cfg.sources else [data_cfg]


def check(data_cfg):
  """data.format / data.tokenizer errors, and a prepared directory's tokenizer
  against data.tokenizer; with data.sources, the mixture's and each source's."""
  if data_cfg.sources:
    for cfg in source_configs(data_cfg):
      check(cfg)
    return
  if data_cfg.format not in FORMATS:
    raise ValueError(f"data.format={data_cfg.format!r} is not valid; use one of {FORMATS}")
  if data_cfg.workers < 0:
    raise ValueError(f"data.workers={data_cfg.workers} must be >= 0 (0 = read in this process)")
  if data_cfg.shuffle_tokens < 0:
    raise ValueError(f"data.shuffle_tokens={data_cfg.shuffle_tokens} must be >= 0 (0 = off)")
  if data_cfg.eos_token and data_cfg.tokenizer == "byte":
    raise ValueError(
      f"data.eos_token={data_cfg.eos_token!r} only applies to a tokenizer.json; "
      "data.tokenizer='byte' ends documents with id 256: leave data.eos_token empty"
    )
  tok = data_tokenizer(data_cfg)
  prepared = is_prepared(data_cfg)
  if data_cfg.format == "arrayrecord" and not prepared:
    raise ValueError(
      f"data.format='arrayrecord' needs data.path to be a directory written by "
      f"scripts/prepare_data.py (with {META_FILE}); got {data_cfg.path!r}"
    )
  if prepared:
    meta = prepared_meta(data_cfg)
    if meta["tokenizer_fingerprint"] != tok.fingerprint:
      raise ValueError(
        f"data.path={data_cfg.path!r} was tokenized with {meta['tokenizer']!r}, not "
        f"data.tokenizer={data_cfg.tokenizer!r}; set data.tokenizer to that tokenizer"
      )


def split_shards(files) -> tuple[list, list]:
  """A prepared directory's (train, eval) shards: eval-* files are the eval split."""
  train = [f for f in files if f.name.startswith("train-")]
  return train, [f for f in files if f.name.startswith("eval-")]


def to_items(files, data_cfg) -> list:
  """What the pipeline reads one at a time: text / JSONL files as they are, and
  each Parquet row group or Arrow record batch as (path, unit)."""
  out = []
  for f in files:
    fmt = file_format(f, data_cfg.format)
    out += columnar.units(f, fmt, data_cfg.field) if fmt in columnar.FORMATS else [f]
  return out


def item_bytes(item, data_cfg) -> int:
  if isinstance(item, tuple):
    return columnar.unit_bytes(item, file_format(item[0], data_cfg.format))
  return paths.size(item)


def split_items(data_cfg) -> tuple[list, list]:
  files, root = resolve_files(data_cfg)
  if is_prepared(data_cfg):
    return split_shards(files)
  return split_files(to_items(files, data_cfg), root, data_cfg.eval_fraction)
