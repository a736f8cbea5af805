"""Regression tests of the issue-14 review (operating it): the pure parts and the spool-level
parts of queue/ops.py, the manager's control and flush, the admin API's helpers, configfile,
logutil and sendmail. Real files in tmp_path; no sockets, no sleeps."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from mtaserver import config
from mtaserver.model import ClientInfo, Envelope, Recipient
from mtaserver.queue.ops import QueueOps, RemoteQueueOps, Selector
from mtaserver.queue.store import QueueStore
from mtaserver.values import parse_duration


def test_remote_age_selectors_of_a_million_seconds_and_more_are_valid_durations():
    params = RemoteQueueOps._params(Selector(older_than=12 * 86400, newer_than=1.5))
    assert parse_duration(params["older_than"]) == 12 * 86400
    assert parse_duration(params["newer_than"]) == 1.5
