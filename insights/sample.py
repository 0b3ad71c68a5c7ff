"""A deterministic, believable e-commerce site, written in the formats real pipelines see.

The site is simulated day by day (so any size streams to disk in time order):

- a catalog of items with a category path, brand, price, stock flag and creation date,
  titles and descriptions that mention their attributes, some items new in the last days;
- people with a latent mix of category and brand interests and a price sensitivity; a
  share register (first anonymous under a cookie id, then logged in), returning
  customers, churners whose activity stops, a weekly rhythm;
- sessions of page views, product views, searches, page pings every 10 s while reading,
  add/remove to cart, checkout and purchase, conversion depending on interest match and
  price;
- the dirt: bots (bot user agents, absurd rates), duplicated events (same event_id),
  late arrivals (written hours after they happened), a few malformed lines.

Outputs below ``out``: ``snowplow_enriched/YYYY/MM/DD/HH/*.tsv.gz`` (131-field enriched
TSV, hourly, like the S3 loader), ``singer/*.jsonl`` (the mobile app's events and the
shop's customers as a Meltano tap emits them: SCHEMA, RECORD, STATE), ``catalog/items.csv``
and ``truth/`` (planted interests, churn, bots: read by tests only, never ingested).
"""

from __future__ import annotations

import csv
import gzip
import json
import math
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path

from insights.ingest.snowplow import ENRICHED_FIELDS

F = {name: i for i, name in enumerate(ENRICHED_FIELDS)}

TAXONOMY: dict[str, list[str]] = {
    "Outdoor": ["Tents", "Sleeping Bags", "Backpacks", "Hiking Boots"],
    "Electronics": ["Headphones", "Cameras", "Smartwatches", "Speakers"],
    "Home": ["Kitchen > Cookware", "Kitchen > Coffee", "Bedding", "Lighting"],
    "Fashion": ["Jackets", "Dresses", "Sneakers", "Accessories"],
    "Sports": ["Running", "Cycling", "Yoga", "Swimming"],
    "Beauty": ["Skincare", "Fragrance", "Haircare", "Makeup"],
}
BRANDS: dict[str, list[str]] = {
    "Outdoor": ["Northpeak", "Trailwise", "Cairn & Co", "Summitline"],
    "Electronics": ["Voltra", "Sonique", "Pixelon", "Auralink"],
    "Home": ["Hearthly", "Brewsmith", "Casa Nova", "Lumen Lane"],
    "Fashion": ["Marlowe", "Thread & Pine", "Kinfolk", "Avenue Nine"],
    "Sports": ["Stridex", "Velocore", "Flowform", "Aqualine"],
    "Beauty": ["Glowra", "Petalique", "Verdance", "Silkroot"],
}


def _singular(plural: str) -> str:
    """The item noun of a leaf category ("Smartwatches" -> "Smartwatch", "Accessories" ->
    "Accessory", "Hiking Boots" -> "Hiking Boot"; "Cookware" and "Yoga" stay)."""
    for ending, singular in (("ches", "ch"), ("sses", "ss"), ("ies", "y"), ("s", "")):
        if plural.endswith(ending):
            return plural[: -len(ending)] + singular
    return plural


BASE_PRICE = {"Outdoor": 120.0, "Electronics": 180.0, "Home": 60.0, "Fashion": 75.0, "Sports": 55.0, "Beauty": 30.0}
ADJECTIVES = ["Ultralight", "Classic", "Pro", "Everyday", "Compact", "Premium", "Eco", "Heritage", "Sport", "Studio"]
MATERIALS = [
    "recycled nylon",
    "organic cotton",
    "aluminium",
    "merino wool",
    "stainless steel",
    "bamboo",
    "vegan leather",
    "ceramic",
]
COLOURS = ["black", "forest green", "sand", "navy", "red", "white", "grey", "ochre"]

BROWSER_UAS = [
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36",
        "Desktop",
    ),
    (
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15",
        "Desktop",
    ),
    (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
        "Phone",
    ),
    (
        "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Mobile Safari/537.36",
        "Phone",
    ),
    (
        "Mozilla/5.0 (iPad; CPU OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
        "Tablet",
    ),
]
BOT_UAS = [
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)",
    "python-requests/2.31.0",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/120.0 Safari/537.36",
]
REFERRERS = [
    ("", "", "", "", ""),
    ("https://www.google.com/", "search", "Google", "", ""),
    ("https://www.google.com/", "search", "Google", "cpc", "spring_sale"),
    ("https://www.facebook.com/", "social", "Facebook", "social", "retargeting"),
    ("https://newsletter.example.com/", "email", "Newsletter", "email", "weekly_digest"),
]
HOST = "shop.example.com"
GROUPS = list(TAXONOMY)

SD_CONTEXTS = "iglu:com.snowplowanalytics.snowplow/contexts/jsonschema/1-0-0"
SD_UNSTRUCT = "iglu:com.snowplowanalytics.snowplow/unstruct_event/jsonschema/1-0-0"
SCHEMA_WEB_PAGE = "iglu:com.snowplowanalytics.snowplow/web_page/jsonschema/1-0-0"
SCHEMA_PRODUCT = "iglu:com.snowplowanalytics.snowplow.ecommerce/product/jsonschema/1-0-0"
SCHEMA_TRANSACTION = "iglu:com.snowplowanalytics.snowplow.ecommerce/transaction/jsonschema/1-0-0"
SCHEMA_ACTION = "iglu:com.snowplowanalytics.snowplow.ecommerce/snowplow_ecommerce_action/jsonschema/1-0-2"
SCHEMA_SEARCH = "iglu:com.snowplowanalytics.snowplow/site_search/jsonschema/1-0-0"
SCHEMA_IAB = "iglu:com.iab.snowplow/spiders_and_robots/jsonschema/1-0-0"
SCHEMA_YAUAA = "iglu:nl.basjes/yauaa_context/jsonschema/1-0-4"


@dataclass
class Item:
    item_id: str
    title: str
    description: str
    group: str
    category: str
    brand: str
    price: float
    in_stock: bool
    created_day: int
    popularity: float
    # The product entity's JSON text by quantity, kept on the item itself: a cache keyed by
    # item id alone outlived a site and wrote the last site's titles and prices into the next.
    entities: dict[int, str] = field(default_factory=dict, repr=False, compare=False)


@dataclass
class Person:
    index: int
    cookie: str
    account: str | None
    register_day: int | None
    start_day: int
    churn_day: int | None
    rate: float
    interests: dict[str, float]
    brands: dict[str, float]
    price_sensitivity: float
    device: int
    app_user: bool
    device_id: str
    is_bot: bool = False
    group_weights: list[float] = field(default_factory=list)
    session_index: int = 0
    cart: list[Item] = field(default_factory=list)
    purchases: int = 0


class _Ids:
    """Deterministic UUIDs from the seeded generator."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def uuid(self) -> str:
        h = f"{self.rng.getrandbits(128):032x}"
        return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:]}"


_DAY_CACHE: dict[int, str] = {}


def _ts(ms: int) -> str:
    """Snowplow's timestamp text, by arithmetic (the hot path of generation)."""
    day, rem = divmod(ms, 86_400_000)
    prefix = _DAY_CACHE.get(day)
    if prefix is None:
        prefix = _DAY_CACHE[day] = datetime.fromtimestamp(day * 86_400, tz=UTC).strftime("%Y-%m-%d")
    hour, rem = divmod(rem, 3_600_000)
    minute, rem = divmod(rem, 60_000)
    second, milli = divmod(rem, 1000)
    return f"{prefix} {hour:02d}:{minute:02d}:{second:02d}.{milli:03d}"


def _sd(schema: str, data: object) -> dict:
    return {"schema": schema, "data": data}


def _contexts(entities: list[dict]) -> str:
    return json.dumps(_sd(SD_CONTEXTS, entities), separators=(",", ":"))


def _unstruct(schema: str, data: dict) -> str:
    return json.dumps(_sd(SD_UNSTRUCT, _sd(schema, data)), separators=(",", ":"))


def _product_entity(item: Item, quantity: int = 1) -> str:
    """The e-commerce product entity as JSON text (cached on the item: items repeat across events)."""
    text = item.entities.get(quantity)
    if text is None:
        data = {
            "id": item.item_id,
            "name": item.title,
            "category": item.category,
            "brand": item.brand,
            "price": item.price,
            "currency": "USD",
            "quantity": quantity,
        }
        text = item.entities[quantity] = json.dumps(_sd(SCHEMA_PRODUCT, data), separators=(",", ":"))
    return text


@cache
def _derived_contexts(device_class: str) -> str:
    robot = device_class == "Robot"
    iab = (
        {
            "spiderOrRobot": True,
            "category": "SPIDER_OR_ROBOT",
            "reason": "FAILED_UA_INCLUDE",
            "primaryImpact": "UNKNOWN",
        }
        if robot
        else {"spiderOrRobot": False, "category": "BROWSER", "reason": "PASSED_ALL", "primaryImpact": "NONE"}
    )
    yauaa = {"deviceClass": device_class, "agentClass": "Robot" if robot else "Browser"}
    return _contexts([_sd(SCHEMA_YAUAA, yauaa), _sd(SCHEMA_IAB, iab)])


@cache
def _action(kind: str, step: int | None = None) -> str:
    data: dict = {"type": kind} if step is None else {"type": kind, "step": step}
    return _unstruct(SCHEMA_ACTION, data)


def make_catalog(n_items: int, days: int, rng: random.Random) -> list[Item]:
    leaves = [(group, f"{group} > {leaf}") for group, subs in TAXONOMY.items() for leaf in subs]
    items = []
    for i in range(n_items):
        group, category = leaves[i % len(leaves)]
        brand = rng.choice(BRANDS[group])
        noun = _singular(category.rsplit(" > ", 1)[-1])
        adjective, material, colour = rng.choice(ADJECTIVES), rng.choice(MATERIALS), rng.choice(COLOURS)
        price = round(BASE_PRICE[group] * math.exp(rng.gauss(0, 0.55)), 2)
        title = f"{brand} {adjective} {noun} {rng.randint(100, 999)}"
        description = (
            f"A {adjective.lower()} {noun.lower()} by {brand} in {colour}, made of {material}. "
            f"Part of our {category.replace(' > ', ' / ')} range."
        )
        # Most items exist before the window; a few arrive in its last week.
        created_day = -rng.randint(30, 720) if rng.random() > 0.04 else days - rng.randint(1, 7)
        items.append(
            Item(
                item_id=f"sku-{i + 1:06d}",
                title=title,
                description=description,
                group=group,
                category=category,
                brand=brand,
                price=price,
                in_stock=rng.random() > 0.06,
                created_day=created_day,
                popularity=rng.paretovariate(1.2),
            )
        )
    return items


def make_people(n: int, days: int, rng: random.Random, ids: _Ids, activity: float = 1.0) -> list[Person]:
    groups = list(TAXONOMY)
    people = []
    for i in range(n):
        weights = [rng.gammavariate(0.35, 1.0) for _ in groups]
        total = sum(weights) or 1.0
        interests = {g: w / total for g, w in zip(groups, weights)}
        top_group = max(interests, key=interests.get)
        brand_weights = {b: rng.gammavariate(0.5, 1.0) for g in groups for b in BRANDS[g]}
        # Each person has a favourite brand in their strongest category.
        brand_weights[rng.choice(BRANDS[top_group])] += 3.0
        registers = rng.random() < 0.55
        start = rng.randint(0, max(0, days - 3)) if rng.random() < 0.45 else 0
        register_day = start + rng.randint(0, 10) if registers else None
        churn = start + rng.randint(7, max(8, days)) if rng.random() < 0.25 else None
        people.append(
            Person(
                index=i,
                cookie=ids.uuid(),
                account=f"cust-{i + 1:07d}" if registers else None,
                register_day=register_day,
                start_day=start,
                churn_day=churn,
                rate=activity * rng.lognormvariate(-2.0, 0.8),
                interests=interests,
                brands=brand_weights,
                price_sensitivity=rng.uniform(0.2, 1.8),
                device=rng.randrange(len(BROWSER_UAS)),
                app_user=registers and rng.random() < 0.3,
                device_id=ids.uuid(),
                group_weights=[interests[g] + 0.02 for g in groups],
            )
        )
    return people


class _Writers:
    """Open-on-demand writers for the hourly TSV files and daily Singer files."""

    def __init__(self, out: Path, compresslevel: int = 6) -> None:
        self.out = out
        self.compresslevel = compresslevel
        self.tsv: dict[int, list[str]] = {}

    def add_tsv(self, hour_ms: int, line: str) -> None:
        lines = self.tsv.get(hour_ms)
        if lines is None:
            lines = self.tsv[hour_ms] = []
        lines.append(line)

    def flush_tsv(self, before_ms: int | None = None) -> None:
        for key in sorted(self.tsv):
            if before_ms is not None and key >= before_ms:
                continue
            lines = self.tsv.pop(key)
            hour = datetime.fromtimestamp(key / 1000, tz=UTC)
            folder = self.out / "snowplow_enriched" / hour.strftime("%Y/%m/%d/%H")
            folder.mkdir(parents=True, exist_ok=True)
            part = len(list(folder.glob("*.tsv.gz")))
            name = f"enriched-{hour:%Y-%m-%d-%H}-{part:04d}.tsv.gz"
            with gzip.open(folder / name, "wt", encoding="utf-8", compresslevel=self.compresslevel, newline="\n") as fh:
                fh.write("\n".join(lines) + "\n")


class SiteSimulator:
    def __init__(
        self,
        users: int,
        days: int,
        seed: int,
        out: Path,
        end: datetime,
        items: int | None = None,
        compresslevel: int = 6,
        activity: float = 1.0,
    ) -> None:
        self.rng = random.Random(seed)
        self.ids = _Ids(self.rng)
        self.days = days
        self.out = out
        self.end = end
        self.start_ms = int((end - timedelta(days=days)).timestamp() * 1000)
        self.items = make_catalog(items or max(200, users // 4), days, self.rng)
        self.activity = activity
        self.people = make_people(users, days, self.rng, self.ids, activity)
        n_bots = max(2, users // 100)
        self.bots = [self._bot(i) for i in range(n_bots)]
        self.writers = _Writers(out, compresslevel)
        self.counts = {
            "web_events": 0,
            "app_events": 0,
            "duplicates": 0,
            "late": 0,
            "malformed": 0,
            "bot_events": 0,
            "orders": 0,
        }
        self.app_lines: list[str] = []

    def _bot(self, i: int) -> Person:
        p = make_people(1, self.days, self.rng, self.ids)[0]
        p.is_bot, p.account, p.register_day, p.app_user, p.rate = True, None, None, False, 0.6
        p.index = -(i + 1)
        return p

    # -- choices -------------------------------------------------------------------------
    def _refresh_pools(self, day: int) -> None:
        """Items on sale that day per (category group, brand), with cumulative weights."""
        self.pools: dict[tuple[str, str], tuple[list[Item], list[float]]] = {}
        for item in self.items:
            if item.created_day <= day:
                fresh = 3.0 if day - item.created_day <= 7 else 1.0
                items, weights = self.pools.setdefault((item.group, item.brand), ([], []))
                items.append(item)
                weights.append((weights[-1] if weights else 0.0) + item.popularity * fresh)

    def _pick_item(self, person: Person, day: int) -> Item:
        rng = self.rng
        group = rng.choices(GROUPS, weights=person.group_weights)[0]
        brands = [b for b in BRANDS[group] if (group, b) in self.pools]
        brand = rng.choices(brands, weights=[0.3 + person.brands[b] for b in brands])[0]
        items, cum = self.pools[(group, brand)]
        return rng.choices(items, cum_weights=cum)[0]

    def _buy_probability(self, person: Person, item: Item) -> float:
        match = person.interests[item.group]
        price_fit = math.exp(-person.price_sensitivity * max(0.0, item.price / BASE_PRICE[item.group] - 0.7))
        return min(0.9, 0.04 + 1.1 * match * price_fit + 0.08 * min(person.purchases, 3))

    # -- one web session -----------------------------------------------------------------
    def _web_line(
        self,
        person: Person,
        session_id: str,
        t: int,
        event: str,
        *,
        page_view_id: str,
        url: str,
        title: str,
        ref: tuple[str, str, str, str, str] | None = None,
        unstruct: str = "",
        contexts: list[str] | None = None,
        event_name: str | None = None,
        ping: int | None = None,
        logged_in: bool = False,
    ) -> tuple[str, str, int]:
        f = [""] * 131
        event_id = self.ids.uuid()
        ua, device_class = (
            (self.rng.choice(BOT_UAS), "Robot") if person.is_bot and person.index % 2 else BROWSER_UAS[person.device]
        )
        latency = self.rng.randint(20, 900)
        f[F["app_id"]], f[F["platform"]] = "shop", "web"
        f[F["etl_tstamp"]] = _ts(t + latency + 1500)
        f[F["collector_tstamp"]] = _ts(t + latency)
        f[F["dvce_created_tstamp"]] = _ts(t)
        f[F["dvce_sent_tstamp"]] = _ts(t + 5)
        f[F["derived_tstamp"]] = _ts(t + latency - 5 if latency > 5 else t)
        f[F["event"]] = event
        f[F["event_id"]] = event_id
        f[F["name_tracker"]], f[F["v_tracker"]], f[F["v_collector"]], f[F["v_etl"]] = (
            "sp",
            "js-3.23.0",
            "ssc-3.1.0-kinesis",
            "snowplow-enrich-kinesis-4.1.0",
        )
        f[F["user_id"]] = person.account or "" if logged_in else ""
        f[F["user_ipaddress"]] = f"203.0.{abs(person.index) % 250}.{(abs(person.index) // 250) % 250}"
        f[F["domain_userid"]] = person.cookie
        f[F["domain_sessionidx"]] = str(person.session_index)
        f[F["network_userid"]] = person.cookie[::-1]
        f[F["page_url"]] = f"https://{HOST}{url}"
        f[F["page_title"]] = title
        f[F["page_urlscheme"]], f[F["page_urlhost"]], f[F["page_urlport"]], f[F["page_urlpath"]] = (
            "https",
            HOST,
            "443",
            url,
        )
        if ref and ref[0]:
            f[F["page_referrer"]] = ref[0]
            f[F["refr_medium"]], f[F["refr_source"]] = ref[1], ref[2]
            f[F["mkt_medium"]], f[F["mkt_campaign"]] = ref[3], ref[4]
            if ref[3]:
                f[F["mkt_source"]] = ref[2].lower()
        f[F["useragent"]] = ua
        f[F["br_lang"]] = "en-US"
        f[F["br_viewheight"]], f[F["doc_height"]] = "900", "3200"
        if ping is not None:
            f[F["pp_xoffset_min"]], f[F["pp_xoffset_max"]] = "0", "0"
            f[F["pp_yoffset_min"]], f[F["pp_yoffset_max"]] = "0", str(ping)
        web_page = '{"schema":"%s","data":{"id":"%s"}}' % (SCHEMA_WEB_PAGE, page_view_id)
        f[F["contexts"]] = '{"schema":"%s","data":[%s]}' % (SD_CONTEXTS, ",".join([web_page, *(contexts or [])]))
        f[F["unstruct_event"]] = unstruct
        f[F["derived_contexts"]] = _derived_contexts(device_class)
        f[F["domain_sessionid"]] = session_id
        f[F["event_vendor"]] = "com.snowplowanalytics.snowplow"
        f[F["event_name"]] = event_name or event
        f[F["event_format"]], f[F["event_version"]] = "jsonschema", "1-0-0"
        f[F["event_fingerprint"]] = f"{self.rng.getrandbits(64):016x}"
        return "\t".join(f), event_id, t + latency

    def _send(self, person: Person, session_id: str, t: int, event: str, **fields: object) -> None:
        """Build one web event and hand it to the collector (with its dirt)."""
        line, _, arrival = self._web_line(person, session_id, t, event, **fields)
        self._emit(line, arrival)

    def _emit(self, line: str, arrival: int) -> None:
        rng = self.rng
        self.counts["web_events"] += 1
        if rng.random() < 0.004:
            self.counts["late"] += 1
            arrival += rng.randint(2, 10) * 3_600_000
        if rng.random() < 0.0008:
            self.counts["malformed"] += 1
            fields = line.split("\t")
            broken = rng.randrange(3)
            if broken == 0:
                line = "\t".join(fields[: rng.randint(10, 120)])
            elif broken == 1:
                fields[F["collector_tstamp"]] = "not-a-timestamp"
                line = "\t".join(fields)
            else:
                fields[F["contexts"]] = fields[F["contexts"]][: len(fields[F["contexts"]]) // 2]
                line = "\t".join(fields)
        self.writers.add_tsv(arrival - arrival % 3_600_000, line)
        if rng.random() < 0.01:
            # The collector retried: same event, same id, collected again a little later.
            self.counts["duplicates"] += 1
            fields = line.split("\t")
            if len(fields) == 131:
                later = arrival + rng.randint(50, 120_000)
                fields[F["collector_tstamp"]] = _ts(later)
                self.writers.add_tsv(later - later % 3_600_000, "\t".join(fields))

    def web_session(self, person: Person, day: int, start: int) -> None:
        rng = self.rng
        person.session_index += 1
        session_id = self.ids.uuid()
        logged_in = person.register_day is not None and day >= person.register_day
        t = start
        ref = rng.choice(REFERRERS)
        n_pages = 20 + rng.randint(0, 40) if person.is_bot else max(1, int(rng.expovariate(1 / 3.0)) + 1)
        for page in range(n_pages):
            page_view_id = self.ids.uuid()
            roll = rng.random()
            item = self._pick_item(person, day)
            if page == 0 and roll < 0.3:
                url, title, kind = "/", "Home | Shop", "home"
            elif roll < 0.22:
                url, title, kind = f"/search?q={item.category.rsplit(' > ', 1)[-1].lower()}", "Search | Shop", "search"
            elif roll < 0.4:
                url, title, kind = (
                    f"/c/{item.category.lower().replace(' > ', '/').replace(' ', '-')}",
                    f"{item.category} | Shop",
                    "category",
                )
            else:
                url, title, kind = f"/p/{item.item_id}", f"{item.title} | Shop", "product"
            self._send(
                person,
                session_id,
                t,
                "page_view",
                page_view_id=page_view_id,
                url=url,
                title=title,
                ref=ref if page == 0 else None,
                logged_in=logged_in,
            )
            t += rng.randint(200, 1500)
            if kind == "search":
                terms = url.split("=", 1)[1].split()
                unstruct = _unstruct(SCHEMA_SEARCH, {"terms": terms, "filters": {}, "totalResults": rng.randint(3, 60)})
                self._send(
                    person,
                    session_id,
                    t,
                    "unstruct",
                    page_view_id=page_view_id,
                    url=url,
                    title=title,
                    unstruct=unstruct,
                    event_name="site_search",
                    logged_in=logged_in,
                )
            if kind == "product":
                unstruct = _action("product_view")
                self._send(
                    person,
                    session_id,
                    t,
                    "unstruct",
                    page_view_id=page_view_id,
                    url=url,
                    title=title,
                    unstruct=unstruct,
                    contexts=[_product_entity(item)],
                    event_name="snowplow_ecommerce_action",
                    logged_in=logged_in,
                )
            dwell = 0.5 if person.is_bot else rng.expovariate(1 / (30.0 if kind == "product" else 12.0))
            # Activity tracking: first ping after 5 s, then every 10 s while the page is read.
            if dwell >= 5:
                for k in range(int((dwell - 5) // 10) + 1):
                    self._send(
                        person,
                        session_id,
                        t + 5000 + k * 10000,
                        "page_ping",
                        page_view_id=page_view_id,
                        url=url,
                        title=title,
                        ping=min(3200, 400 * (k + 1)),
                        logged_in=logged_in,
                    )
            t += int(dwell * 1000)
            if (
                kind == "product"
                and not person.is_bot
                and item.in_stock
                and rng.random() < self._buy_probability(person, item) * 0.9
            ):
                quantity = 1 if rng.random() < 0.85 else 2
                person.cart.append(item)
                unstruct = _action("add_to_cart")
                self._send(
                    person,
                    session_id,
                    t,
                    "unstruct",
                    page_view_id=page_view_id,
                    url=url,
                    title=title,
                    unstruct=unstruct,
                    contexts=[_product_entity(item, quantity)],
                    event_name="snowplow_ecommerce_action",
                    logged_in=logged_in,
                )
                t += rng.randint(500, 4000)
                if rng.random() < 0.12:
                    person.cart.remove(item)
                    unstruct = _action("remove_from_cart")
                    self._send(
                        person,
                        session_id,
                        t,
                        "unstruct",
                        page_view_id=page_view_id,
                        url=url,
                        title=title,
                        unstruct=unstruct,
                        contexts=[_product_entity(item, quantity)],
                        event_name="snowplow_ecommerce_action",
                        logged_in=logged_in,
                    )
            # Bots click through pages far faster than anyone reads them.
            t += rng.randint(100, 600) if person.is_bot else rng.randint(1000, 20000)
        if person.cart and not person.is_bot:
            self._checkout(person, session_id, t, day, logged_in)

    def _checkout(self, person: Person, session_id: str, t: int, day: int, logged_in: bool) -> None:
        rng = self.rng
        page_view_id = self.ids.uuid()
        self._send(
            person,
            session_id,
            t,
            "page_view",
            page_view_id=page_view_id,
            url="/checkout",
            title="Checkout | Shop",
            logged_in=logged_in,
        )
        entities = [_product_entity(it) for it in person.cart]
        unstruct = _action("checkout_step", 1)
        self._send(
            person,
            session_id,
            t + 800,
            "unstruct",
            page_view_id=page_view_id,
            url="/checkout",
            title="Checkout | Shop",
            unstruct=unstruct,
            contexts=entities,
            event_name="snowplow_ecommerce_action",
            logged_in=logged_in,
        )
        mean_match = sum(self._buy_probability(person, it) for it in person.cart) / len(person.cart)
        if rng.random() < 0.35 + 0.6 * mean_match:
            # Paying needs an account: a guest registers here if not registered yet.
            if person.account is None:
                person.account = f"cust-{person.index + 1:07d}"
            if person.register_day is None or person.register_day > day:
                person.register_day = day
            order_id = f"ord-{self.rng.getrandbits(40):010x}"
            revenue = round(sum(it.price for it in person.cart), 2)
            transaction = json.dumps(
                _sd(
                    SCHEMA_TRANSACTION,
                    {
                        "transaction_id": order_id,
                        "revenue": revenue,
                        "currency": "USD",
                        "payment_method": "card",
                        "total_quantity": len(person.cart),
                    },
                ),
                separators=(",", ":"),
            )
            unstruct = _action("transaction")
            t += rng.randint(20_000, 120_000)
            self._send(
                person,
                session_id,
                t,
                "unstruct",
                page_view_id=self.ids.uuid(),
                url="/checkout/confirmation",
                title="Thank you | Shop",
                unstruct=unstruct,
                contexts=entities + [transaction],
                event_name="snowplow_ecommerce_action",
                logged_in=True,
            )
            person.purchases += 1
            self.counts["orders"] += 1
            person.cart = []
        elif rng.random() < 0.5:
            person.cart = []

    # -- one app session (Singer, Amplitude-style export) ---------------------------------
    def app_session(self, person: Person, day: int, start: int) -> None:
        rng = self.rng
        session_id = start
        t = start

        def record(event_type: str, props: dict) -> None:
            insert_id = self.ids.uuid()
            rec = {
                "insert_id": insert_id,
                "event_type": event_type,
                "event_time": _ts(t).replace(" ", "T") + "Z",
                "user_id": person.account,
                "device_id": person.device_id,
                "session_id": session_id,
                "platform": "iOS",
                "event_properties": props,
            }
            msg = json.dumps(
                {
                    "type": "RECORD",
                    "stream": "events",
                    "record": rec,
                    "time_extracted": _ts(t + 3_600_000).replace(" ", "T") + "Z",
                },
                separators=(",", ":"),
            )
            self.counts["app_events"] += 1
            if rng.random() < 0.0008:
                self.counts["malformed"] += 1
                msg = msg[: len(msg) // 2]
            self.app_lines.append(msg)
            if rng.random() < 0.005:
                self.counts["duplicates"] += 1
                self.app_lines.append(msg)

        record("Screen Viewed", {"screen": "Home"})
        for _ in range(max(1, int(rng.expovariate(1 / 3.0)) + 1)):
            item = self._pick_item(person, day)
            t += rng.randint(3000, 60000)
            if rng.random() < 0.2:
                record("Products Searched", {"query": item.category.rsplit(" > ", 1)[-1].lower(), "screen": "Search"})
                t += rng.randint(2000, 9000)
            record(
                "Product Viewed",
                {"product_id": item.item_id, "price": item.price, "currency": "USD", "screen": "Product"},
            )
            if item.in_stock and rng.random() < self._buy_probability(person, item) * 0.9:
                t += rng.randint(2000, 20000)
                record(
                    "Product Added", {"product_id": item.item_id, "price": item.price, "quantity": 1, "currency": "USD"}
                )
                person.cart.append(item)
        if person.cart:
            t += rng.randint(5000, 40000)
            record("Checkout Started", {"screen": "Checkout"})
            mean_match = sum(self._buy_probability(person, it) for it in person.cart) / len(person.cart)
            if rng.random() < 0.35 + 0.6 * mean_match:
                order_id = f"ord-{self.rng.getrandbits(40):010x}"
                t += rng.randint(20_000, 90_000)
                for it in person.cart:
                    record(
                        "Product Purchased",
                        {
                            "product_id": it.item_id,
                            "price": it.price,
                            "quantity": 1,
                            "revenue": it.price,
                            "currency": "USD",
                            "order_id": order_id,
                        },
                    )
                person.purchases += 1
                self.counts["orders"] += 1
                person.cart = []

    # -- the simulation -------------------------------------------------------------------
    def _active(self, person: Person, day: int) -> bool:
        return day >= person.start_day and (person.churn_day is None or day < person.churn_day)

    def run(self) -> dict:
        rng = self.rng
        singer_dir = self.out / "singer"
        singer_dir.mkdir(parents=True, exist_ok=True)
        customers_seen: set[str] = set()
        for day in range(self.days):
            day_ms = self.start_ms + day * 86_400_000
            weekday = datetime.fromtimestamp(day_ms / 1000, tz=UTC).weekday()
            # Weekly rhythm: busier at weekends and on Monday evenings.
            rhythm = {0: 1.1, 1: 0.9, 2: 0.9, 3: 0.95, 4: 1.0, 5: 1.25, 6: 1.3}[weekday]
            self._refresh_pools(day)
            for person in self.people:
                if not self._active(person, day):
                    continue
                n = _poisson(rng, person.rate * rhythm)
                for _ in range(n):
                    start = day_ms + int(rng.betavariate(2.5, 1.8) * 86_000_000)
                    on_app = (
                        person.app_user
                        and person.register_day is not None
                        and day >= person.register_day
                        and rng.random() < 0.4
                    )
                    if on_app:
                        self.app_session(person, day, start)
                    else:
                        self.web_session(person, day, start)
            for bot in self.bots:
                if rng.random() < 0.5 * min(1.0, self.activity):
                    self.counts["bot_events"] += 1
                    self.web_session(bot, day, day_ms + rng.randint(0, 80_000_000))
            self.writers.flush_tsv(before_ms=day_ms - 12 * 3_600_000)
            self._write_singer_day(singer_dir, day, day_ms, customers_seen)
        self.writers.flush_tsv()
        return self.counts

    def _write_singer_day(self, folder: Path, day: int, day_ms: int, customers_seen: set[str]) -> None:
        date = datetime.fromtimestamp(day_ms / 1000, tz=UTC).strftime("%Y-%m-%d")
        if self.app_lines:
            schema = {
                "type": "SCHEMA",
                "stream": "events",
                "key_properties": ["insert_id"],
                "schema": {
                    "type": "object",
                    "properties": {
                        "insert_id": {"type": "string"},
                        "event_type": {"type": "string"},
                        "event_time": {"type": "string", "format": "date-time"},
                        "user_id": {"type": ["null", "string"]},
                        "device_id": {"type": "string"},
                        "session_id": {"type": "integer"},
                        "platform": {"type": "string"},
                        "event_properties": {"type": "object"},
                    },
                },
            }
            state = {
                "type": "STATE",
                "value": {
                    "bookmarks": {
                        "events": {"replication_key": "event_time", "replication_key_value": f"{date}T23:59:59Z"}
                    }
                },
            }
            with open(folder / f"events-{date}.jsonl", "w", encoding="utf-8") as fh:
                fh.write(json.dumps(schema) + "\n" + "\n".join(self.app_lines) + "\n" + json.dumps(state) + "\n")
            self.app_lines = []
        new = [p for p in self.people if p.account and p.register_day == day and p.account not in customers_seen]
        if new:
            schema = {
                "type": "SCHEMA",
                "stream": "customers",
                "key_properties": ["customer_id"],
                "schema": {
                    "type": "object",
                    "properties": {
                        "customer_id": {"type": "string"},
                        "email": {"type": "string"},
                        "created_at": {"type": "string"},
                        "country": {"type": "string"},
                    },
                },
            }
            with open(folder / f"customers-{date}.jsonl", "w", encoding="utf-8") as fh:
                fh.write(json.dumps(schema) + "\n")
                for p in new:
                    customers_seen.add(p.account)
                    rec = {
                        "customer_id": p.account,
                        "email": f"{p.account}@mail.example.com",
                        "created_at": f"{date}T12:00:00Z",
                        "country": ["US", "GB", "DE", "FR", "NL"][p.index % 5],
                    }
                    fh.write(json.dumps({"type": "RECORD", "stream": "customers", "record": rec}) + "\n")

    def write_catalog(self) -> None:
        folder = self.out / "catalog"
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "items.csv", "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(
                ["item_id", "title", "description", "category", "brand", "price", "currency", "in_stock", "created_at"]
            )
            for it in self.items:
                created = datetime.fromtimestamp((self.start_ms + it.created_day * 86_400_000) / 1000, tz=UTC)
                writer.writerow(
                    [
                        it.item_id,
                        it.title,
                        it.description,
                        it.category,
                        it.brand,
                        f"{it.price:.2f}",
                        "USD",
                        "true" if it.in_stock else "false",
                        created.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    ]
                )

    def write_truth(self) -> None:
        folder = self.out / "truth"
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "users.jsonl", "w", encoding="utf-8") as fh:
            for p in self.people + self.bots:
                top_group = max(p.interests, key=p.interests.get)
                top_brand = max(p.brands, key=p.brands.get)
                churn = (
                    datetime.fromtimestamp((self.start_ms + p.churn_day * 86_400_000) / 1000, tz=UTC).date().isoformat()
                    if p.churn_day is not None and p.churn_day < self.days
                    else None
                )
                fh.write(
                    json.dumps(
                        {
                            "user_id": p.account or p.cookie,
                            "account_id": p.account,
                            "anonymous_ids": [p.cookie] + ([p.device_id] if p.app_user else []),
                            "is_bot": p.is_bot,
                            "top_category": top_group,
                            "interests": {
                                g: round(w, 4) for g, w in sorted(p.interests.items(), key=lambda kv: -kv[1])
                            },
                            "top_brand": top_brand,
                            "price_sensitivity": round(p.price_sensitivity, 3),
                            "churn_date": churn,
                            "purchases": p.purchases,
                        }
                    )
                    + "\n"
                )


def _poisson(rng: random.Random, lam: float) -> int:
    if lam <= 0:
        return 0
    threshold, k, product = math.exp(-lam), 0, rng.random()
    while product > threshold:
        k += 1
        product *= rng.random()
    return k


def generate(
    out: str | Path,
    users: int = 2000,
    days: int = 60,
    seed: int = 7,
    end: datetime | None = None,
    items: int | None = None,
    compresslevel: int = 6,
    activity: float = 1.0,
) -> dict:
    """Write a whole sample site below ``out`` and return what was generated (counts).
    ``activity`` scales every person's visit rate (1: about 2.5 events per person-day; a
    large site of mostly occasional visitors has far less)."""
    if users < 1 or days < 1 or activity <= 0:
        raise ValueError(
            f"a sample site needs users >= 1, days >= 1 and activity > 0 (got {users}, {days}, {activity})"
        )
    out = Path(out)
    end = end or datetime(2026, 11, 1, tzinfo=UTC)
    for sub in ("snowplow_enriched", "singer", "catalog", "truth"):
        target = out / sub
        if target.exists():
            for path in sorted(target.rglob("*"), reverse=True):
                path.unlink() if path.is_file() else path.rmdir()
    sim = SiteSimulator(users, days, seed, out, end, items, compresslevel, activity)
    sim.write_catalog()
    counts = sim.run()
    sim.write_truth()
    summary = {
        "users": users,
        "days": days,
        "seed": seed,
        "activity": activity,
        "items": len(sim.items),
        "end": end.isoformat(),
        **counts,
    }
    (out / "truth" / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
