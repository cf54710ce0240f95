"""When is an EventBridge schedule due? ``cron(min hour day-of-month month day-of-week year)`` and ``rate(...)``.

Supports numbers, ``*``, ``?``, ranges, lists, steps and month/day names; ``L``, ``W`` and ``#`` are not
supported locally (such schedules are only fired on demand).
"""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo

MONTH_NAMES = "JAN FEB MAR APR MAY JUN JUL AUG SEP OCT NOV DEC"
DAY_NAMES = "SUN MON TUE WED THU FRI SAT"  # EventBridge: 1 = SUN
MONTHS = {name: index for index, name in enumerate(MONTH_NAMES.split(" "), 1)}
DAYS = {name: index for index, name in enumerate(DAY_NAMES.split(" "), 1)}
RATE = re.compile(r"^rate\((\d+) (minute|minutes|hour|hours|day|days)\)$")


class UnsupportedSchedule(ValueError):
    pass


def _values(field: str, low: int, high: int, names: dict[str, int]) -> set[int]:
    if field in ("*", "?"):
        return set(range(low, high + 1))
    words = re.sub(r"[A-Za-z]{3}", lambda m: "" if m.group(0).upper() in names else m.group(0), field)
    if any(mark in words.upper() for mark in "LW#"):
        raise UnsupportedSchedule(f"cron field {field!r} (L, W, #) is not supported locally")
    values: set[int] = set()
    for part in field.split(","):
        step = 1
        if "/" in part:
            part, step_text = part.split("/", 1)
            step = int(step_text)
        if part in ("*", ""):
            start, end = low, high
        elif "-" in part:
            first, last = part.split("-", 1)
            start, end = names.get(first.upper()) or int(first), names.get(last.upper()) or int(last)
        else:
            start = names.get(part.upper()) or int(part)
            end = high if "/" in field else start
        values.update(range(start, end + 1, step))
    return values


def cron_matches(expression: str, moment: dt.datetime) -> bool:
    """Whether ``cron(...)`` fires at ``moment`` (already in the schedule's time zone), to the minute."""
    fields = expression.removeprefix("cron(").removesuffix(")").split()
    if len(fields) != 6:
        raise UnsupportedSchedule(f"{expression}: expected six fields")
    minutes, hours, days, months, weekdays, years = fields
    weekday = (moment.isoweekday() % 7) + 1  # Monday=2 ... Sunday=1
    return (
        moment.minute in _values(minutes, 0, 59, {})
        and moment.hour in _values(hours, 0, 23, {})
        and moment.month in _values(months, 1, 12, MONTHS)
        and moment.year in _values(years, 1970, 2199, {})
        and (days == "?" or moment.day in _values(days, 1, 31, {}))
        and (weekdays == "?" or weekday in _values(weekdays, 1, 7, DAYS))
    )


def due(expression: str, time_zone: str, now: dt.datetime, started: dt.datetime) -> bool:
    """Whether a schedule fires in the minute ``now`` (UTC); ``rate`` counts from ``started``."""
    rate = RATE.match(expression)
    if rate:
        unit = {"minute": 60, "hour": 3600, "day": 86400}[rate.group(2).rstrip("s")]
        elapsed_minutes = int((now - started).total_seconds() // 60)
        every = int(rate.group(1)) * unit // 60
        return elapsed_minutes > 0 and elapsed_minutes % every == 0
    if expression.startswith("cron("):
        return cron_matches(expression, now.astimezone(zoneinfo.ZoneInfo(time_zone)))
    raise UnsupportedSchedule(f"{expression} is not a cron or rate expression")
