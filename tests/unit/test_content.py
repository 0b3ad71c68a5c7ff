"""The catalog encoder: what an item's text becomes."""

import numpy as np
import pandas as pd

from models_ml.content import CatalogEncoder


def _items(**columns: list) -> pd.DataFrame:
    base = {"title": ["Trail Tent", "Mug"], "description": [None, None], "category": ["Outdoor > Tents", "Home"],
            "brand": ["Northpeak", None], "price": [120.0, None]}  # fmt: skip
    return pd.DataFrame({**base, **columns})


def test_html_descriptions_are_read_as_text() -> None:
    """A Shopify product's body_html: tags are no words and entities are their characters;
    a missing title or description adds nothing (it used to add the word 'nan')."""
    items = _items(description=["<p>Two-person <strong>tent</strong> &amp; poles</p>", float("nan")])
    docs = CatalogEncoder(8, 1).fit(items).documents(items)
    assert docs[0].split() == ["Trail", "Tent", "Two-person", "tent", "&", "poles", "cat_outdoor",
                               "cat_outdoor_tents", "brand_northpeak", "price_mid"]  # fmt: skip
    assert "nan" not in docs[1] and "strong" not in docs[0]


def test_a_catalog_without_text_gives_zero_vectors() -> None:
    """No catalog at all (or no word in it): the encoder fits and every item gets the zero
    vector, so no item is scored from its text."""
    empty = CatalogEncoder(8, 1).fit(_items().iloc[0:0])
    assert empty.transform(_items()).shape == (2, 1) and not empty.transform(_items()).any()
    fitted = CatalogEncoder(8, 1).fit(_items())
    vectors = fitted.transform(_items())
    assert vectors.shape[0] == 2 and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
