"""Readers and writers for conversation datasets.

Formats in: Persona-Chat ParlAI text ("parlai"), Hugging Face personachat JSON ("hf-json"),
Synthetic-Persona-Chat CSV ("spc-csv"), personaloom JSON Lines ("jsonl"). Out: JSONL, SPC CSV,
ParlAI text (with seeded distractor candidates), a Hugging Face datasets directory (+ Parquet) and a
dataset card. Bad input raises InputError naming the file and line/row.
"""

from __future__ import annotations

from personaloom.io.card import dataset_card, write_dataset_card
from personaloom.io.convert import TARGETS, convert
from personaloom.io.detect import FORMATS, detect_format
from personaloom.io.hf_dataset import write_hf_dataset
from personaloom.io.hf_json import read_hf_json
from personaloom.io.jsonl import read_jsonl, write_jsonl
from personaloom.io.parlai import read_parlai, write_parlai
from personaloom.io.readers import read_conversations
from personaloom.io.spc_csv import read_spc_csv, write_spc_csv

__all__ = [
    "FORMATS",
    "TARGETS",
    "convert",
    "dataset_card",
    "detect_format",
    "read_conversations",
    "read_hf_json",
    "read_jsonl",
    "read_parlai",
    "read_spc_csv",
    "write_dataset_card",
    "write_hf_dataset",
    "write_jsonl",
    "write_parlai",
    "write_spc_csv",
]
