"""DSEReranker: CrossEncoder's ``predict`` and ``rank`` (arguments, defaults, return types) on a DSE student."""

from __future__ import annotations

import logging
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any, Literal

import numpy as np
import torch
from sentence_transformers import CrossEncoder, SentenceTransformer
from sentence_transformers.util.decorators import cross_encoder_predict_rank_args_decorator
from torch import Tensor, nn

from st_dse.checks import int_at_least
from st_dse.data import check_pairs
from st_dse.inference.scoring import encode_unique, pair_logits
from st_dse.student import DSEStudent, get_pair_head, load_student

logger = logging.getLogger(__name__)

__all__ = ["DSEReranker", "check_rank_inputs", "ranked_hits"]

STUDENT_ATTRIBUTES = ("model_card_data", "tokenizer", "config", "device")
Hit = dict[Literal["corpus_id", "score", "text"], int | float | str]


def check_rank_inputs(query: str, documents: Sequence[str], top_k: int | None) -> None:
    """Refuse ``rank`` arguments that CrossEncoder would misread: several queries, documents given as one string
    (ranked as its characters) and a ``top_k`` that is not a positive integer. An empty ``documents`` list is valid
    (nothing to rank, as CrossEncoder.rank returns ``[]``); the texts themselves are checked when they are scored."""
    if not isinstance(query, str):
        raise TypeError(f"query must be one text (a string), got a {type(query).__name__}; call rank once per query.")
    if isinstance(documents, str):
        raise TypeError(
            f"documents must be a list of texts, got a single string ({documents[:50]!r}); pass [documents] to rank "
            "one document."
        )
    if top_k is not None:
        int_at_least("top_k", top_k)


def ranked_hits(
    ids: Iterable[int], scores: Iterable[float], documents: Sequence[str], top_k: int | None, return_documents: bool
) -> list[Hit]:
    """CrossEncoder.rank's output: the best ``top_k`` of ``{"corpus_id", "score"[, "text"]}``, ties in input order."""
    hits = [{"corpus_id": i, "score": score} for i, score in zip(ids, scores)]
    for hit in hits if return_documents else []:
        hit["text"] = documents[hit["corpus_id"]]
    return sorted(hits, key=lambda hit: hit["score"], reverse=True)[:top_k]


class DSEReranker:
    """A DSE student with CrossEncoder's ``predict`` and ``rank``: code written for a cross-encoder reranker runs
    unchanged on the (much faster) student, and so do sentence-transformers' CrossEncoder evaluators. ``save``,
    ``push_to_hub``, ``to``, ``device``, ``tokenizer``, ``config`` and ``model_card_data`` are the student's.

    Scores are the head's logits passed through ``activation_fn`` (as in CrossEncoder: Sigmoid for a one-logit binary
    head, else Identity). Document embeddings (each pair's second text) are kept in an LRU cache keyed by text: call
    :meth:`clear_cache` after changing the model's weights, max_seq_length or prompts.

    Args:
        model: A student with a PairHead, e.g. ``st_dse.load_student("path/to/student")``.
        activation_fn: The default activation applied to the logits; None picks it from the head.
        cache_size: Most document embeddings kept in the cache (0 disables it).
    """

    is_singular_input = CrossEncoder.is_singular_input

    def __init__(self, model: SentenceTransformer, activation_fn: Callable | None = None, cache_size: int = 100_000):
        self.cache_size = int_at_least("cache_size", cache_size, minimum=0)
        self.model, self.head = model, get_pair_head(model)
        self.cache: OrderedDict[str, Tensor] = OrderedDict()
        self.cache_lock = threading.Lock()
        self.activation_fn = activation_fn if activation_fn is not None else self.get_default_activation_fn()

    @classmethod
    def from_pretrained(cls, model_name_or_path: str, activation_fn=None, cache_size=100_000, **kwargs) -> DSEReranker:
        """Load a saved student with :func:`st_dse.load_student` (``kwargs`` go there) and wrap it."""
        return cls(load_student(model_name_or_path, **kwargs), activation_fn=activation_fn, cache_size=cache_size)

    def get_default_activation_fn(self) -> Callable:
        """Sigmoid for a one-logit binary head; Identity for regression and k-way heads."""
        if self.head.num_labels == 1 and self.head.problem_type == "binary":
            return nn.Sigmoid()
        return nn.Identity()

    @property
    def default_activation_function(self) -> Callable:
        """CrossEncoder's deprecated name of :attr:`activation_fn`."""
        message = "The `default_activation_function` property was renamed `activation_fn`, as in CrossEncoder."
        warnings.warn(message, DeprecationWarning, stacklevel=2)
        return self.activation_fn

    @property
    def num_labels(self) -> int:
        return self.head.num_labels

    def __getattr__(self, name: str) -> Any:
        # What sentence-transformers' evaluators and hub code read from a CrossEncoder: the student's own (its model
        # card data collects the evaluators' metrics, and the student's save writes them).
        if name in STUDENT_ATTRIBUTES:
            return getattr(self.model, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def to(self, *args, **kwargs) -> DSEReranker:
        """Move or cast the student, as :meth:`torch.nn.Module.to`, and return this reranker. The document cache is
        cleared: its embeddings keep the old device and dtype."""
        self.model.to(*args, **kwargs)
        self.clear_cache()
        return self

    def save(self, path: str, *args, **kwargs) -> None:
        """Save the student (encoder and head) with :meth:`st_dse.DSEStudent.save`: all or nothing, loaded again by
        :meth:`from_pretrained` or :func:`st_dse.load_student`. Other arguments are those of ``DSEStudent.save``.
        The activation is not saved: a loaded reranker picks it from the head, unless ``activation_fn`` is given."""
        self._saving_student().save(path, *args, **kwargs)

    save_pretrained = save  # CrossEncoder's alias; no trainer writes a reranker's checkpoints

    def push_to_hub(self, repo_id: str, *args, **kwargs) -> str:
        """Upload the student (encoder and head) with its ``push_to_hub``; arguments are those of
        :meth:`SentenceTransformer.push_to_hub`."""
        return self._saving_student().push_to_hub(repo_id, *args, **kwargs)

    def _saving_student(self) -> DSEStudent:
        # A plain SentenceTransformer would save the head inside modules.json, which SentenceTransformer(path) refuses.
        if not isinstance(self.model, DSEStudent):
            raise TypeError(
                f"DSEReranker can save only a DSEStudent, got a {type(self.model).__name__}: build the student with "
                "st_dse.build_student or load it with st_dse.load_student, which save the head beside the encoder."
            )
        return self.model

    def evaluate(self, evaluator: Callable, output_path: str | None = None) -> dict[str, float] | float:
        """Run a sentence-transformers CrossEncoder evaluator on this reranker, as :meth:`CrossEncoder.evaluate`."""
        return evaluator(self, output_path)

    @property
    def max_length(self) -> int | None:
        return self.model.max_seq_length

    @max_length.setter
    def max_length(self, value: int) -> None:
        self.model.max_seq_length = value
        self.clear_cache()

    @property
    def num_cached(self) -> int:
        """How many document embeddings the cache holds."""
        return len(self.cache)

    def clear_cache(self) -> None:
        """Drop every cached document embedding."""
        with self.cache_lock:
            self.cache.clear()

    def _embed_documents(self, texts: list[str], use_cache: bool, **encode_kwargs) -> Tensor:
        """Embeddings of distinct ``texts``, row i for ``texts[i]``: cached ones reused, the others encoded."""
        if not use_cache or self.cache_size == 0:
            return self.model.encode(texts, convert_to_tensor=True, **encode_kwargs)
        with self.cache_lock:
            found = {text: self.cache[text] for text in texts if text in self.cache}
            for text in found:
                self.cache.move_to_end(text)
        missing = [text for text in texts if text not in found]
        if missing:
            new = self.model.encode(missing, convert_to_tensor=True, **encode_kwargs)
            # One copy per row: a view would keep the whole encoded batch alive after its other rows are evicted.
            new_rows = dict(zip(missing, new.detach().clone().unbind(0)))
            found.update(new_rows)
            with self.cache_lock:
                self.cache.update(new_rows)
                while len(self.cache) > self.cache_size:
                    self.cache.popitem(last=False)
        return torch.stack([found[text].to(self.model.device) for text in texts])

    def _logits(self, queries: list[str], documents: list[str], prompt_name, prompt, use_cache, **encode_kwargs):
        """Head logits ``(n, num_labels)`` of the pairs ``(queries[i], documents[i])``; each text encoded once."""
        encode_query = partial(
            self.model.encode, prompt_name=prompt_name, prompt=prompt, convert_to_tensor=True, **encode_kwargs
        )
        query_embeddings, query_rows = encode_unique(encode_query, queries)
        embed = partial(self._embed_documents, use_cache=use_cache, **encode_kwargs)
        document_embeddings, document_rows = encode_unique(embed, documents)
        return pair_logits(self.head, query_embeddings, query_rows, document_embeddings, document_rows)

    @torch.inference_mode()
    @cross_encoder_predict_rank_args_decorator
    def predict(
        self,
        inputs: Sequence[Sequence[str]] | Sequence[str],
        prompt_name: str | None = None,
        prompt: str | None = None,
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
        activation_fn: Callable | None = None,
        apply_softmax: bool | None = False,
        convert_to_numpy: bool = True,
        convert_to_tensor: bool = False,
        device: str | list[str | torch.device] | None = None,
        pool: dict[Literal["input", "output", "processes"], Any] | None = None,
        chunk_size: int | None = None,
        **kwargs,
    ) -> list[Tensor] | np.ndarray | Tensor:
        """Score text pairs, with the arguments, defaults and return types of :meth:`CrossEncoder.predict`.

        What differs: ``prompt_name``/``prompt`` apply to the first text of each pair (the query); documents are
        encoded with the model's default prompt, so that their cached embeddings serve every query. A list of
        devices, ``pool`` and ``chunk_size`` are accepted and ignored: the student runs in this process. Other
        ``kwargs`` go to ``model.encode`` for both texts of each pair, and then bypass the document cache.
        """
        int_at_least("batch_size", batch_size)
        singular = self.is_singular_input(inputs)
        inputs = [inputs] if singular else inputs
        inputs = [pair.tolist() if isinstance(pair, np.ndarray) else pair for pair in inputs]
        if pool is not None or isinstance(device, list):
            logger.warning("DSEReranker scores in this process: `pool` and a list of devices are ignored.")
        elif device is not None:
            self.model.to(device)
        for row, pair in enumerate(inputs):
            if isinstance(pair, str) or not isinstance(pair, Sequence) or len(pair) != 2:
                raise ValueError(
                    f"Input {row} is {pair!r}: DSEReranker.predict takes one pair of texts [text1, text2] or a list "
                    "of such pairs."
                )
        queries, documents = [pair[0] for pair in inputs], [pair[1] for pair in inputs]
        check_pairs(queries, documents)
        scores = torch.tensor([], device=self.model.device)
        if inputs:
            self.model.eval()
            encode_kwargs = {"batch_size": batch_size, "show_progress_bar": show_progress_bar, **kwargs}
            # Extra encode() arguments make other document vectors than the cached ones.
            scores = self._logits(queries, documents, prompt_name, prompt, not kwargs, **encode_kwargs).float()
            # The same order as CrossEncoder's: activation, squeeze one-logit heads, then softmax.
            scores = (activation_fn if activation_fn is not None else self.activation_fn)(scores)
            if self.num_labels == 1 and scores.ndim > 1:
                scores = scores.squeeze(-1)
            if apply_softmax and scores.ndim > 1:
                scores = torch.nn.functional.softmax(scores, dim=1)
        if not convert_to_tensor:
            scores = (scores.cpu().numpy() if len(scores) else np.array([])) if convert_to_numpy else list(scores)
        return scores[0] if singular else scores

    @cross_encoder_predict_rank_args_decorator
    def rank(
        self, query: str, documents: Sequence[str], top_k: int | None = None, return_documents: bool = False, **kwargs
    ) -> list[Hit]:
        """Rank ``documents`` for ``query``, best first, with the arguments and output of :meth:`CrossEncoder.rank`
        (other arguments as for :meth:`predict`): ``[{"corpus_id": int, "score": float[, "text": str]}, ...]``.

        Cached document embeddings are reused, so ranking the same candidates for many queries costs one query
        encode plus the head per call. Like CrossEncoder.rank, it needs a one-logit head.
        """
        check_rank_inputs(query, documents, top_k)
        if self.num_labels != 1:
            raise ValueError(
                f"DSEReranker.rank() only works for heads with num_labels=1 (like CrossEncoder.rank), but this head "
                f"has {self.num_labels} ({self.head.problem_type}). Use DSEReranker.predict() with input pairs."
            )
        scores = self.predict([[query, document] for document in documents], convert_to_tensor=True, **kwargs)
        return ranked_hits(range(len(documents)), scores.tolist(), documents, top_k, return_documents)
