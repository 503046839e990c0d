"""Data: read tables, validate them into a report with row numbers, split them."""

from tunery.data.load import TableWriter, detect_format, iter_table, normalize_frame, read_table, write_table
from tunery.data.split import split_frame
from tunery.data.validate import (
    Finding,
    LabelEncoding,
    PreparedData,
    Source,
    ValidationReport,
    check_file,
    data_sources,
    detect_delimiter,
    encode_labels,
    infer_columns,
    infer_task,
    label_names_for,
    prepare,
)

__all__ = [
    "Finding", "LabelEncoding", "PreparedData", "Source", "TableWriter", "ValidationReport", "check_file",
    "data_sources", "detect_delimiter",
    "detect_format", "encode_labels", "infer_columns", "infer_task", "iter_table", "label_names_for",
    "normalize_frame", "prepare", "read_table", "split_frame", "write_table",
]
