"""Tables and files: filling table nodes, and writing tables and nodes to disk atomically.

Used by the Logic's evaluation panel and sweep table (:mod:`.evaluation`) and by the web app's exports.
Nothing here imports torch or the library's numerical modules.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import vtk

from MetaRegistrationLib.errors import InputError
from MetaRegistrationLib.files import atomic_path, write_text_atomic


def fillTable(tableNode, columns: Sequence[str], rows: Sequence[Sequence]) -> None:
    """Replace a table node's content: one column per name, typed by its values (numbers as doubles; strings,
    and every column of a table without rows, as strings)."""
    table = tableNode.GetTable()
    wasModifying = tableNode.StartModify()
    tableNode.RemoveAllColumns()
    for index, name in enumerate(columns):
        values = [row[index] for row in rows]
        numeric = bool(values) and all(isinstance(v, (int, float, np.floating, np.integer)) for v in values)
        array = vtk.vtkDoubleArray() if numeric else vtk.vtkStringArray()
        array.SetName(name)
        for value in values:
            array.InsertNextValue(float(value) if numeric else str(value))
        table.AddColumn(array)
    tableNode.Modified()
    tableNode.EndModify(wasModifying)


def _csvValue(value) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    return str(value)


def saveTableCsv(tableNode, path: str | Path) -> Path:
    """Write a table node as CSV (header = column names), atomically: a reader never sees half a file."""
    table = tableNode.GetTable()
    columns = [table.GetColumn(c) for c in range(table.GetNumberOfColumns())]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([column.GetName() for column in columns])
    for row in range(table.GetNumberOfRows()):
        writer.writerow([_csvValue(column.GetValue(row)) for column in columns])
    write_text_atomic(path, buffer.getvalue())
    return Path(path)


def saveNode(node, path: str | Path) -> Path:
    """Write a node with its default storage node (format from the extension: ``.h5`` transform, ``.nrrd``
    volume, ``.seg.nrrd``, ``.mrk.json``), atomically; the node keeps no reference to the file.

    Raises:
        InputError: naming the node and the file when writing fails.
    """
    from .conversions import nodeName  # imports the torch-based library: only when writing, never at load

    path = Path(path)
    with atomic_path(path) as temporary:
        writer = node.CreateDefaultStorageNode()
        writer.SetFileName(str(temporary))
        if not writer.WriteData(node):
            raise InputError(f"{nodeName(node)}: could not be written to {path}")
    return path
