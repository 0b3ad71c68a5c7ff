"""The recommendation table and its read API: contract answers, rules, token, atomic swaps."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from exports.serving import make_server, publish_table, recs
from insights.config import Config, MerchandisingRules
from insights.warehouse import connect


def _publish(config: Config, run_id: str = "r1") -> dict:
    con = connect(config, read_only=True)
    try:
        return publish_table(config, con, run_id)
    finally:
        con.close()


def _get(base: str, path: str, token: str | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture
def api(small: Config):  # noqa: ANN201
    _publish(small)
    server = make_server(small, "127.0.0.1", 0, token="")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", small
    server.shutdown()
    server.server_close()


def _expected(config: Config, user_id: str) -> list[str]:
    con = connect(config, read_only=True)
    try:
        return [
            r[0]
            for r in con.execute(
                "select r.item_id from main.recommendations r join main.dim_items i using (item_id) "
                "where user_id = ? and i.in_stock order by rank",
                [user_id],
            ).fetchall()
        ]
    finally:
        con.close()


def test_contract_answers(api: tuple[str, Config]) -> None:
    base, config = api
    status, body = _get(base, "/v1/users/u001/recommendations?limit=5")
    assert status == 200 and body["user_id"] == "u001"
    assert [i["item_id"] for i in body["items"]] == _expected(config, "u001")[:5]
    assert all(set(i) == {"item_id", "score", "reason"} and i["reason"] == "collaborative" for i in body["items"])
    status, body = _get(base, "/v1/users/someone-new/recommendations")
    assert status == 200 and len(body["items"]) == 10 and {i["reason"] for i in body["items"]} == {"trending"}
    assert "i003" not in [i["item_id"] for i in body["items"]]  # out of stock
    status, body = _get(base, "/v1/items/i001/similar?limit=3")
    assert status == 200 and [i["item_id"] for i in body["items"]] == ["i002", "i004", "i005"]
    assert _get(base, "/v1/items/nope/similar")[0] == 404
    status, body = _get(base, "/healthz")
    assert status == 200 and body["status"] == "ok" and body["model_version"] == "v1"
    assert recs(config, "u001", 5) == _get(base, "/v1/users/u001/recommendations?limit=5")[1]
    # Hostile ids are data: an unknown user, not an error.
    assert _get(base, "/v1/users/%27%3B%20drop%20table%20recs%3B--/recommendations")[0] == 200
    assert _get(base, "/v1/users/..%2F..%2Fetc%2Fpasswd/recommendations")[0] == 200


@pytest.mark.parametrize("query", ["limit=0", "limit=101", "limit=abc", "limit=-1"])
def test_limit_is_bounded(api: tuple[str, Config], query: str) -> None:
    status, body = _get(api[0], f"/v1/users/u001/recommendations?{query}")
    assert status == 400 and "limit must be" in body["error"]
    if query != "limit=abc":  # insights recs holds to the same bounds (0 used to mean the default)
        with pytest.raises(ValueError, match="--limit must be from 1 to 100"):
            recs(api[1], "u001", int(query.split("=")[1]))


def test_request_size_is_bounded(api: tuple[str, Config]) -> None:
    assert _get(api[0], "/v1/users/" + "x" * 3000 + "/recommendations")[0] == 414


def test_token_is_required_when_configured(small: Config) -> None:
    _publish(small)
    server = make_server(small, "127.0.0.1", 0, token="s3cret")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert _get(base, "/v1/users/u001/recommendations")[0] == 401
        assert _get(base, "/v1/users/u001/recommendations", token="wrong")[0] == 401
        assert _get(base, "/v1/users/u001/recommendations", token="s3cret")[0] == 200
    finally:
        server.shutdown()
        server.server_close()


def test_merchandising_rules(small: Config) -> None:
    _publish(small)
    plain = [i["item_id"] for i in recs(small, "u001", 10)["items"]]
    rules = MerchandisingRules(
        exclude_categories=["Home"],
        boost=[{"brand": "Brand2", "factor": 10.0}],
        pin=[{"item_id": "i039", "position": 2}],
    )
    config = small.model_copy(update={"serving": small.serving.model_copy(update={"rules": rules})})
    items = recs(config, "u001", 10)["items"]
    con = connect(small, read_only=True)
    info = {r[0]: r[1:] for r in con.execute("select item_id, category, brand from main.dim_items").fetchall()}
    con.close()
    assert len(items) == 10
    assert items[1] == {"item_id": "i039", "score": items[1]["score"], "reason": "pinned"}
    rest = [i for i in items if i["reason"] != "pinned"]
    assert not any(info[i["item_id"]][0].startswith("Home") for i in items)
    ranked = [i for i in rest if i["reason"] == "collaborative"]
    assert [i["score"] for i in ranked] == sorted((i["score"] for i in ranked), reverse=True)
    boosted = [i["item_id"] for i in ranked if info[i["item_id"]][1] == "Brand2"]
    assert boosted and ranked[0]["item_id"] in boosted
    assert {i["item_id"] for i in ranked} <= set(plain)
    assert any(i["reason"] == "trending" for i in rest)  # filled after the exclusions


def test_an_item_is_never_similar_to_itself(small: Config) -> None:
    """Neither the trending fill of a short similar list nor a pin puts the item asked about
    into its own list (i001's five similar items lose i003, out of stock, and are filled
    from global trending, which holds i001)."""
    _publish(small)
    rules = MerchandisingRules(pin=[{"item_id": "i001", "position": 1}])
    config = small.model_copy(update={"serving": small.serving.model_copy(update={"rules": rules})})
    server = make_server(config, "127.0.0.1", 0, token="")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        listed = [i["item_id"] for i in _get(base, "/v1/items/i001/similar?limit=10")[1]["items"]]
        assert len(listed) == 10 and "i001" not in listed and len(set(listed)) == 10
        assert listed[:4] == ["i002", "i004", "i005", "i006"]
        other = _get(base, "/v1/items/i010/similar?limit=10")[1]["items"]
        assert (other[0]["item_id"], other[0]["reason"]) == ("i001", "pinned")
        assert _get(base, "/v1/users/u001/recommendations?limit=3")[1]["items"][0]["item_id"] == "i001"
    finally:
        server.shutdown()
        server.server_close()


def test_a_list_filled_from_trending_never_holds_what_the_user_bought(small: Config) -> None:
    """Asked for more than the ten published picks, the API fills from global trending
    (i000..i019); u001 bought i000 and i005, so neither comes back (ml.exclude_purchased),
    while u002, who only viewed i000, gets it. Without exclude_purchased they do."""
    _publish(small)
    mine = [i["item_id"] for i in recs(small, "u001", 30)["items"]]
    theirs = [i["item_id"] for i in recs(small, "u002", 30)["items"]]
    assert len(mine) >= 20 and "i000" not in mine and "i005" not in mine and len(set(mine)) == len(mine)
    assert "i000" in theirs
    keep = small.model_copy(update={"ml": small.ml.model_copy(update={"exclude_purchased": False})})
    _publish(keep)
    assert {"i000", "i005"} <= {i["item_id"] for i in recs(keep, "u001", 30)["items"]}


def test_a_logged_out_visitor_gets_their_own_list_by_cookie_id(api: tuple[str, Config]) -> None:
    """An app that knows only the visitor's cookie id (logged out, on a page view) asks
    with it: a cookie stitched to an identified user answers that user's list, less what
    they bought; an unstitched cookie, or one whose user has no list, gets trending."""
    base, config = api
    own = _get(base, "/v1/users/u001/recommendations?limit=30")[1]["items"]
    for cookie in ("cookie-a", "cookie-b"):
        status, body = _get(base, f"/v1/users/{cookie}/recommendations?limit=30")
        assert status == 200 and body == {"user_id": cookie, "items": own}
    assert {"collaborative"} <= {i["reason"] for i in own} and "i005" not in [i["item_id"] for i in own]
    for stranger in ("cookie-x", "cookie-zzz"):
        items = _get(base, f"/v1/users/{stranger}/recommendations")[1]["items"]
        assert {i["reason"] for i in items} == {"trending"}
    assert recs(config, "cookie-a", 30)["items"] == own


def test_rules_that_name_nothing_are_reported(small: Config, caplog: pytest.LogCaptureFixture) -> None:
    """A misspelt category or brand, or an item gone from the catalog, makes a rule do
    nothing; it is logged when the table is loaded and listed by /healthz."""
    _publish(small)
    rules = MerchandisingRules(
        exclude_categories=["Outdoor", "Outdoor > Tent"],
        exclude_items=["i002", "i999"],
        boost=[{"brand": "Brand2", "factor": 2.0}, {"brand": "brand2", "category": "Home > Kitchen", "factor": 2.0}],
        pin=[{"item_id": "gone", "position": 1}],
    )
    config = small.model_copy(update={"serving": small.serving.model_copy(update={"rules": rules})})
    server = make_server(config, "127.0.0.1", 0, token="")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with caplog.at_level("WARNING", logger="exports.serving"):
            health = _get(f"http://127.0.0.1:{server.server_address[1]}", "/healthz")[1]
        expected = [
            "exclude_items 'i999' matches nothing in the published table's 40 items",
            "exclude_categories 'Outdoor > Tent' matches nothing in the published table's 40 items",
            "boost brand 'brand2' matches nothing in the published table's 40 items",
            "pin item_id 'gone' matches nothing in the published table's 40 items",
        ]
        assert health["status"] == "ok" and health["rule_warnings"] == expected
        assert [r.getMessage() for r in caplog.records] == [f"serving.rules: {w}" for w in expected]
    finally:
        server.shutdown()
        server.server_close()
    assert "rule_warnings" not in json.dumps(_healthz(small))


def _healthz(config: Config) -> dict:
    server = make_server(config, "127.0.0.1", 0, token="")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        return _get(f"http://127.0.0.1:{server.server_address[1]}", "/healthz")[1]
    finally:
        server.shutdown()
        server.server_close()


def test_no_errors_or_partial_lists_while_publishing(api: tuple[str, Config]) -> None:
    base, config = api
    errors: list[str] = []
    done = threading.Event()
    answered = [0]

    def hammer() -> None:
        while not done.is_set():
            status, body = _get(base, "/v1/users/u002/recommendations?limit=10")
            answered[0] += 1
            if status != 200 or len(body["items"]) != 10:
                errors.append(f"{status} {body}")

    workers = [threading.Thread(target=hammer) for _ in range(4)]
    for w in workers:
        w.start()
    for run in range(8):
        _publish(config, f"swap{run}")
    done.set()
    for w in workers:
        w.join()
    assert errors == [] and answered[0] > 20


def test_a_publication_removes_the_files_of_builds_killed_before_their_swap(small: Config) -> None:
    live = _publish(small)
    folder = Path(live["path"]).parent
    name = Path(live["path"]).name
    killed = [folder / f".{name}.r0.4242.building", folder / f".{name}.forget.4343.building"]
    for path in killed:
        path.write_bytes(b"half a table")
    unrelated = folder / f".{name}.notes"
    unrelated.write_text("kept")
    _publish(small, "r2")
    assert [p for p in killed if p.exists()] == []
    assert unrelated.exists() and sorted(p.name for p in folder.glob("*.building")) == []
    assert recs(small, "u002", 3)["items"]


def test_a_table_name_with_pattern_characters_removes_only_its_own_leftovers(small: Config) -> None:
    small.serving.path = str(Path(small.serving.path).with_name("recs[1]*.sqlite"))
    live = Path(_publish(small)["path"])
    own = live.with_name(f".{live.name}.r0.4242.building")
    other = live.with_name(".recs1x.sqlite.r0.4242.building")  # what the name matches as a pattern
    own.write_bytes(b"half a table")
    other.write_bytes(b"another table's build")
    _publish(small, "r2")
    assert not own.exists() and other.exists()


def test_serve_names_the_address_it_cannot_listen_on(small: Config, capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    from insights.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["--config", small.source_file, "serve", "--port", str(port)]) == 1
    assert (
        capsys.readouterr().err.strip()
        == f"insights: serve failed: cannot listen on 127.0.0.1:{port}: Address already in use"
    )
    assert main(["--config", small.source_file, "serve", "--port", "70000"]) == 1
    assert "--port must be from 0 to 65535, got 70000" in capsys.readouterr().err
