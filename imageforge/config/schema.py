"""The JSON Schema of images.yml, generated from the typed model so the two never drift."""

from __future__ import annotations

import json
from typing import Any

from imageforge.config import ImagesFile


def document() -> dict[str, Any]:
    schema = ImagesFile.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "imageforge images.yml"
    return schema


def text() -> str:
    return json.dumps(document(), indent=2, sort_keys=True) + "\n"
