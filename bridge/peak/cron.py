"""Five-field crontab expressions (Peak ``triggers[].cron``) as APScheduler 3.x triggers.

APScheduler 3.x reads weekday numbers with 0 = Monday and requires both day fields to match;
crontab has 0 (and 7) = Sunday and, when neither day field starts with ``*``, fires on either.
:func:`cron_trigger` rewrites the weekday field as names and builds an ``OrTrigger`` for the
either-day case, so the schedule is the one crontab would run.
"""

from __future__ import annotations

import re

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.combining import OrTrigger
from apscheduler.triggers.cron import CronTrigger

from runtimes import safety

FIELDS = ("minute", "hour", "day", "month", "day_of_week")
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


def _day(text: str) -> int:
    """One weekday as crontab writes it: 0-7 (0 and 7 are Sunday) or a name."""
    if text.lower() in _DAYS:
        return _DAYS.index(text.lower())
    if text.isdigit() and int(text) <= 7:
        return int(text)
    raise ValueError(f"{text!r} is not a weekday (0-7 or sun..sat)")


def crontab_weekdays(field: str) -> str:
    """Crontab's day-of-week field as APScheduler 3.x reads it: a list of day names."""
    if field == "*":
        return field
    days: set[int] = set()
    for part in field.split(","):
        base, slash, step_text = part.partition("/")
        if slash and not (step_text.isdigit() and int(step_text) > 0):
            raise ValueError(f"{part!r}: the step after '/' must be a whole number above 0")
        left, dash, right = base.partition("-")
        if base == "*":
            low, high = 0, 6
        else:
            low = _day(left)
            high = _day(right) if dash else (7 if slash else low)
        if high < low:
            raise ValueError(f"{part!r}: the range starts after it ends")
        days.update(d % 7 for d in range(low, high + 1, int(step_text) if slash else 1))
    return ",".join(_DAYS[d] for d in sorted(days))


def cron_trigger(expr: str, timezone: str = "UTC") -> BaseTrigger:
    """The trigger that fires when the crontab expression ``expr`` would; ValueError if bad."""
    fields = expr.split()
    if len(fields) != 5:
        raise ValueError(f"{safety.show(expr)} needs 5 fields (minute hour day-of-month month "
                         f"day-of-week), not {len(fields)}")
    minute, hour, day, month, weekday = fields
    try:
        weekdays = crontab_weekdays(weekday)
    except ValueError as exc:
        raise ValueError(f"day-of-week field {weekday!r}: {exc}") from None
    try:
        if day.startswith("*") or weekday.startswith("*"):
            return CronTrigger.from_crontab(f"{minute} {hour} {day} {month} {weekdays}", timezone)
        return OrTrigger([
            CronTrigger.from_crontab(f"{minute} {hour} {day} {month} *", timezone),
            CronTrigger.from_crontab(f"{minute} {hour} * {month} {weekdays}", timezone),
        ])
    except ValueError as exc:
        raise ValueError(_which_field(fields, exc)) from None


def _which_field(fields: list[str], exc: ValueError) -> str:
    """APScheduler's message, prefixed with the name of the field it is about."""
    for name, value in zip(FIELDS[:4], fields, strict=False):
        try:
            CronTrigger(**{name: value})
        except ValueError as field_exc:
            reason = re.sub(r"^Error validating expression '.*?': ", "", str(field_exc))
            return f"{name.replace('_', '-')} field {value!r}: {reason}"
    return str(exc)


def check_cron(expr: str) -> str:
    """``expr`` when it is a valid five-field crontab expression, else ValueError."""
    cron_trigger(expr)
    return expr
