"""All Parquet and DuckDB I/O of fvlp. Nothing else in the project opens these files."""
