"""Columnar sources, read with pyarrow: Parquet files, and Arrow files such as a
Hugging Face `datasets` directory written by `save_to_disk` holds (no `datasets`
package needed).

A row is one document: the string in the column `data.field`. A file is read a
unit at a time (a Parquet row group, an Arrow record batch), so a large file is
never in memory whole, and units are what the splits, shards and shuffles move:
an item is (path, unit index). Arrow files are memory-mapped.
"""

import contextlib
import functools
import json
import pathlib

from trainer import paths

FORMATS = ("parquet", "arrow")
SUFFIXES = {".parquet": "parquet", ".arrow": "arrow"}
_STATE = "state.json"  # a `save_to_disk` Dataset directory's list of Arrow files
_DATASET_DICT = "dataset_dict.json"  # a `save_to_disk` DatasetDict: one directory per split


def dataset_files(directory) -> list[pathlib.Path] | None:
  """The Arrow files of a `save_to_disk` directory in order, or None if it is not one."""
  directory = pathlib.Path(directory)
  if (directory / _DATASET_DICT).is_file():
    splits = json.loads((directory / _DATASET_DICT).read_text()).get("splits", [])
    raise ValueError(
      f"data.path={str(directory)!r} is a Hugging Face DatasetDict; point data.path at "
      f"one of its split directories ({', '.join(splits) or 'e.g. train'})"
    )
  if not (directory / _STATE).is_file():
    return None
  state = json.loads((directory / _STATE).read_text())
  return [directory / f["filename"] for f in state.get("_data_files", [])]


@contextlib.contextmanager
def _parquet(path: str):
  import pyarrow.parquet as pq  # noqa: PLC0415 - only columnar sources need pyarrow

  with contextlib.ExitStack() as stack:
    source = stack.enter_context(paths.open_input(path)) if paths.is_uri(path) else path
    yield stack.enter_context(pq.ParquetFile(source))


def _arrow_source(path: str):
  """A local Arrow file memory-mapped; a URI's opened through its filesystem."""
  import pyarrow as pa  # noqa: PLC0415

  return paths.open_input(path) if paths.is_uri(path) else pa.memory_map(path)


@functools.lru_cache(maxsize=16)
def _arrow_batches(path: str) -> tuple:
  """An Arrow file's record batches (IPC file or stream format), memory-mapped."""
  import pyarrow as pa  # noqa: PLC0415

  try:
    reader = pa.ipc.open_file(_arrow_source(path))
    return tuple(reader.get_batch(i) for i in range(reader.num_record_batches))
  except pa.ArrowInvalid:  # `datasets` writes the stream format
    return tuple(pa.ipc.open_stream(_arrow_source(path)))


def _schema(path: str, fmt: str):
  if fmt == "parquet":
    with _parquet(path) as f:
      return f.schema_arrow
  import pyarrow as pa  # noqa: PLC0415

  try:
    return pa.ipc.open_file(_arrow_source(path)).schema
  except pa.ArrowInvalid:
    return pa.ipc.open_stream(_arrow_source(path)).schema


def units(path, fmt: str, field: str) -> list[tuple[str, int]]:
  """The items of one file: (path, unit) for each row group / record batch. Raises
  if the file cannot be read or has no text column `field`."""
  import pyarrow as pa  # noqa: PLC0415

  path = str(path)
  try:
    schema = _schema(path, fmt)
  except (pa.ArrowInvalid, OSError) as e:
    raise ValueError(f"{path} is not a readable {fmt} file ({e}); check data.format") from e
  if field not in schema.names:
    raise ValueError(
      f"data.field={field!r} is not a column of {path} (its columns: "
      f"{', '.join(schema.names)}); set data.field to the text column"
    )
  kind = schema.field(field).type
  if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
    raise ValueError(
      f"data.field={field!r} in {path} holds {kind}, not text; set data.field to a string column"
    )
  if fmt == "parquet":
    with _parquet(path) as f:
      count = f.num_row_groups
  else:
    count = len(_arrow_batches(path))
  return [(path, i) for i in range(count)]


def read(item, fmt: str, field: str) -> tuple[int, list]:
  """(the unit's first row number in its file, its values of `field`: str or None)."""
  path, unit = item
  if fmt == "parquet":
    with _parquet(path) as f:
      first = sum(f.metadata.row_group(i).num_rows for i in range(unit))
      return first, f.read_row_group(unit, columns=[field]).column(0).to_pylist()
  batches = _arrow_batches(path)
  first = sum(b.num_rows for b in batches[:unit])
  return first, batches[unit].column(field).to_pylist()


def unit_bytes(item, fmt: str) -> int:
  """Bytes one unit holds (uncompressed Parquet, or the Arrow buffers)."""
  path, unit = item
  if fmt == "parquet":
    with _parquet(path) as f:
      return f.metadata.row_group(unit).total_byte_size
  return _arrow_batches(path)[unit].nbytes
