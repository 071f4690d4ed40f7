"""Titles are dynamic partitions keyed by MAL id (added by the `synopses` asset as titles arrive)."""

import dagster as dg

MAL_ID_PARTITIONS_NAME = "mal_ids"
mal_id_partitions = dg.DynamicPartitionsDefinition(name=MAL_ID_PARTITIONS_NAME)
