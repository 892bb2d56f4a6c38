"""The offline sample: a seeded synthetic corpus and a tiny teacher trained on it."""

from gistnet.sample.corpus import generate_documents, generate_stories, write_corpus

__all__ = ["generate_documents", "generate_stories", "write_corpus"]
