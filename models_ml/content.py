"""Catalog embeddings: item text and metadata as vectors, with no downloaded weights.

TF-IDF over the title, description, every level of the category path, the brand and the
price band, reduced by a truncated SVD (latent semantic analysis, Deerwester et al. 1990).
A ridge regression maps these text vectors into the ALS item space, learned on the items
that have enough interactions; an item nobody has touched yet then gets a collaborative
vector from its text and can be scored for every user like any other item.
"""

from __future__ import annotations

import html
import re

import numpy as np
import pandas as pd
from sklearn.decomposition import TruncatedSVD
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import Ridge

TOKEN = re.compile(r"(?u)\b\w[\w_]+\b")  # the TF-IDF's tokens: two or more word characters
MARKUP = re.compile(r"<[^>]*>")


def _plain(value: object) -> str:
    """Text without HTML markup (a Shopify product's body_html): tags are not words."""
    if not isinstance(value, str) or not value:
        return ""
    return html.unescape(MARKUP.sub(" ", value)) if "<" in value or "&" in value else value


def _slug(value: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", value.lower()).strip("_")


class CatalogEncoder:
    """Item text and metadata to unit-length vectors; fitted once per model version and
    reused at scoring time, so items added later land in the same space."""

    def __init__(self, dimensions: int, seed: int) -> None:
        self.dimensions = dimensions
        self.seed = seed
        self.tfidf: TfidfVectorizer | None = None
        self.svd: TruncatedSVD | None = None
        self.price_bands: tuple[float, float] = (0.0, 0.0)
        self.empty = False  # fitted on a catalog with no text at all

    def documents(self, items: pd.DataFrame) -> list[str]:
        """One document per item; metadata become tokens that cannot collide with prose."""
        prices = pd.to_numeric(items["price"], errors="coerce")
        low, high = self.price_bands
        docs = []
        for row, price in zip(items.itertuples(index=False), prices):
            parts = [_plain(row.title), _plain(row.description)]
            path = [level.strip() for level in str(row.category or "").split(">") if level.strip()]
            for depth in range(1, len(path) + 1):
                parts.append("cat_" + _slug(" ".join(path[:depth])))
            if isinstance(row.brand, str) and row.brand:
                parts.append("brand_" + _slug(row.brand))
            if pd.notna(price):
                parts.append("price_" + ("budget" if price < low else "premium" if price > high else "mid"))
            docs.append(" ".join(parts))
        return docs

    def fit(self, items: pd.DataFrame) -> CatalogEncoder:
        prices = pd.to_numeric(items["price"], errors="coerce")
        self.price_bands = (
            (float(prices.quantile(0.33)), float(prices.quantile(0.67))) if prices.notna().any() else (0.0, 0.0)
        )
        documents = self.documents(items)
        if not any(TOKEN.search(d) for d in documents):
            # No catalog (or no text in it): every item gets the zero vector, so no item is
            # scored from its text and the collaborative model stands alone.
            self.empty = True
            return self
        self.tfidf = TfidfVectorizer(sublinear_tf=True, min_df=1, token_pattern=TOKEN.pattern)
        matrix = self.tfidf.fit_transform(documents)
        d = min(self.dimensions, matrix.shape[0] - 1, matrix.shape[1] - 1)
        self.svd = TruncatedSVD(n_components=d, random_state=self.seed).fit(matrix) if d >= 2 else None
        return self

    def transform(self, items: pd.DataFrame) -> np.ndarray:
        if getattr(self, "empty", False):  # (encoders pickled before this flag lack it)
            return np.zeros((len(items), 1), dtype=np.float32)
        if self.tfidf is None:
            raise RuntimeError("CatalogEncoder.transform before fit")
        matrix = self.tfidf.transform(self.documents(items))
        dense = self.svd.transform(matrix) if self.svd is not None else matrix.toarray()
        norms = np.linalg.norm(dense, axis=1, keepdims=True)
        return (dense / np.where(norms == 0, 1, norms)).astype(np.float32)


def fit_mapping(text: np.ndarray, factors: np.ndarray, warm: np.ndarray, alpha: float = 1.0) -> Ridge | None:
    """Ridge regression from text vectors to ALS item vectors, fitted on the warm items."""
    if warm.sum() < 2:
        return None
    return Ridge(alpha=alpha).fit(text[warm], factors[warm])


def cold_vectors(
    mapping: Ridge, cold_text: np.ndarray, cold_groups: np.ndarray, warm_factors: np.ndarray, warm_groups: np.ndarray
) -> np.ndarray:
    """Predicted ALS vectors for cold items from their text vectors.

    Ridge predictions shrink towards the mean, so a cold item would never outscore a warm
    one; each prediction keeps its direction and takes the median length of the warm items
    of its group (category), or of all warm items when its group has none.
    """
    if len(cold_text) == 0:
        return np.zeros((0, warm_factors.shape[1]), dtype=np.float32)
    predicted = mapping.predict(cold_text).astype(np.float32)
    norms = np.linalg.norm(warm_factors, axis=1)
    overall = float(np.median(norms)) if len(norms) else 1.0
    by_group = pd.Series(norms).groupby(pd.Series(warm_groups)).median()
    target = pd.Series(cold_groups).map(by_group).fillna(overall).to_numpy(dtype=np.float32)
    lengths = np.linalg.norm(predicted, axis=1)
    return predicted / np.where(lengths == 0, 1, lengths)[:, None] * target[:, None]
