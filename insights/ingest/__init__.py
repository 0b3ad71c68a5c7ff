"""Ingestion: every source kind into the warehouse's raw tables and canonical events."""

from insights.ingest.loader import IngestError, LoadResult, ingest_source, run_ingest

__all__ = ["IngestError", "LoadResult", "ingest_source", "run_ingest"]
