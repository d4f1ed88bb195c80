"""Write weather.jsonl: weather observations in varied prose -> one-line bulletins.

Deterministic (seeded): `python suites/data/make_weather.py` rewrites the same file.
The task is a small, real summarisation: the facts are scattered through 1-3 sentences
in several phrasings, and the bulletin has one fixed format. An instruct model writes a
sensible but differently shaped answer zero-shot; a few minutes of LoRA teaches the format,
so ROUGE and loss move well beyond their confidence intervals.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

CITIES = ["Oslo", "Lyon", "Porto", "Krakow", "Dublin", "Turin", "Ghent", "Malmo", "Leeds",
          "Graz", "Bilbao", "Aarhus", "Brno", "Cork", "Nantes", "Split", "Tartu", "Basel",
          "Bergen", "Seville", "Utrecht", "Vilnius", "Zagreb", "Tampere"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
SKIES = ["sunny", "cloudy", "overcast", "foggy", "partly cloudy", "clear", "showery", "stormy"]
DIRS = {"north": "N", "south": "S", "east": "E", "west": "W", "northeast": "NE",
        "northwest": "NW", "southeast": "SE", "southwest": "SW"}

OPENINGS = [
    "On {day} in {city} the sky will be {sky} and the temperature should reach {temp} degrees.",
    "{city} can expect a {sky} {day}, with highs of {temp} degrees Celsius.",
    "Forecasters say {day} brings {sky} weather to {city}; the thermometer will show {temp}°C.",
    "Expect {temp} degrees and {sky} skies over {city} this {day}.",
]
WINDS = [
    "Winds blow from the {dir} at {wind} km/h.",
    "A {dir} wind of about {wind} kilometres per hour is likely.",
    "The wind comes in from the {dir}, around {wind} km/h.",
]
RAINS = [
    "The chance of rain is {rain} percent.",
    "There is a {rain}% probability of precipitation.",
    "Rain is {rain}% likely.",
]


def example(rng: random.Random, i: int) -> dict[str, str]:
    f = {"city": rng.choice(CITIES), "day": rng.choice(DAYS), "sky": rng.choice(SKIES),
         "temp": rng.randint(-8, 34), "dir": rng.choice(list(DIRS)),
         "wind": rng.randrange(0, 65, 5), "rain": rng.randrange(0, 100, 10)}
    parts = [rng.choice(OPENINGS), rng.choice(WINDS), rng.choice(RAINS)]
    head, tail = parts[0], parts[1:]
    rng.shuffle(tail)
    report = " ".join(p.format(**f) for p in [head, *tail])
    bulletin = (f"{f['city']}, {f['day']}: {f['temp']}°C, {f['sky']}, "
                f"{DIRS[f['dir']]} wind {f['wind']} km/h, rain {f['rain']}%.")
    return {"id": f"wx-{i:04d}", "report": report, "bulletin": bulletin}


def main() -> None:
    rng = random.Random(20261122)
    rows = [example(rng, i) for i in range(600)]
    out = Path(__file__).with_name("weather.jsonl")
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")


if __name__ == "__main__":
    main()
