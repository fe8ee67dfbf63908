"""A local, deterministic simulator of the edX Enterprise API as seen through api.edx.org.

It models the AWS API Gateway *and* the backends behind it (LMS, enterprise-catalog,
analytics), as researched in ``docs/edx-api-behaviour.md``. It imports nothing from the rest
of ``harvester`` so a shared bug cannot hide itself.

Usage::

    from harvester.sim import SimConfig, SimServer, build_app

    async with SimServer(SimConfig(seed=7, items=5000), port=0) as srv:
        srv.base_url, srv.client_id, srv.client_secret, srv.catalog_uuids

    $ python -m harvester.sim --port 8080 --items 100000 --fault-rate 0.02
    base_url=http://127.0.0.1:8080 client_id=... client_secret=...

Endpoints
---------
=====================================================================  ==========  =========
route                                                                  class       throttle
=====================================================================  ==========  =========
``POST /oauth2/v1/access_token`` (form, ``token_type=jwt``)            token       none
``GET /enterprise/v1/enterprise-catalogs``                             lms         rate_lms
``GET /enterprise/v2/enterprise-catalogs``  (page_size unbounded)      content     none
``GET /enterprise/v2/enterprise-catalogs/{uuid}``  (content pages)     content     none
``GET /enterprise/v{1,2}/enterprise-catalogs/{uuid}/courses/{key}``    lms         rate_lms
``GET …/course-runs/{run_id}`` and ``…/programs/{uuid}``               lms         rate_lms
``GET /enterprise/v3/enterprise-customer/{uuid}/learner-summary``      learners    own rate
``GET /__info``, ``GET /__stats``, ``POST /__reset``,                  (ops)       none
``POST /__epoch {"epoch": N}``, ``GET /__changes?from=A&to=B``,
``POST /__config {"knob": value}`` (live knobs only, e.g. ``forbid_catalogs``,
``detail_403_rate``, ``detail_403_keys``)
=====================================================================  ==========  =========

Auth is ``Authorization: JWT <token>``: missing header -> 400 (gateway), ``Bearer``/unknown
prefix -> 401 "Authentication credentials were not provided.", bad/expired JWT -> 401
"Invalid token.". Token expiry and throttle windows both run on the injectable ``clock``.

Knobs (``SimConfig`` fields; every one is also a ``--flag`` of ``python -m harvester.sim``)
-------------------------------------------------------------------------------------------
=========================  ==============  ==================================================
field                      default         effect
=========================  ==============  ==================================================
seed                       0               all data, credentials, RNGs
catalogs                   3               catalogs of the client's enterprise (+1 foreign)
items                      2000            items per catalog at epoch 0 (~20% shared w/ next)
learners                   500             learner-summary rows
epoch                      0               initial data epoch (``POST /__epoch`` moves it)
mutation_rate              0.05            per epoch: changed items; /5 replaced; /10 added
client_id, client_secret   None            default: derived from seed
token_ttl                  180             ``expires_in`` and JWT lifetime, seconds
max_page_size              100             content/v1-list page_size clamp
learner_max_page_size      1000            learner-summary clamp
rate_lms                   "60/min"        v1 list + details budget ("20/s", "0"=off)
rate_learners              "60/min"        learner-summary budget
limit_mode                 "ignore"        "doc": ``limit`` is the page size (default 20)
accept_mode                "doc"           XML unless Accept has JSON; "backend": DRF rules
end_marker                 "null"          "empty": missing next/previous render as ""
public_base                None            base of next/previous links (default: own URL)
strip_retry_after          False           429 without ``Retry-After`` (as the gateway)
gateway_remap              False           non-{200,304,401,403,404,429,500} -> 400
latency_ms, jitter_ms      0, 0            added latency per API request
fault_rate                 0.0             chance of a fault per API request
fault_kinds                all             500,502,503,504,reset,truncate,badjson,maintenance
fault_token                False           faults also hit the token endpoint
fault_scope                "all"           "details": faults hit only detail requests
detail_404_rate            0.0             fraction of items whose detail 404s
detail_404_mode            "transient"     "transient" (first K calls) or "permanent"
detail_404_times           2               K
shuffle                    False           new permutation on every content page
churn                      0.0             chance per content page that the order rotates
etag                       False           ETag/Last-Modified on details, 304 on match
forbid_catalogs            ()              own catalog indexes whose content/details 403
echo_token                 False           every 403 body echoes the caller's Authorization
expires_in                 None            grant's expires_in override ("0", "-5", "soon", "")
omit_count                 False           content pages have no ``count`` (live)
detail_403_rate            0.0             fraction of items whose detail 403s, always (live)
detail_403_keys            ()              item keys whose detail 403s, always (live)
drop_catalog_at_epoch      ()              "I:E": own catalog I unlisted (content 404) from E
case_twin_catalogs         False           catalog 1's id = catalog 0's id upper-cased
lie_count                  0               content pages report this ``count`` (0 = truth)
keyless_items              0               per catalog, items listed without key or uuid (live)
dup_keys                   0               per catalog, items listed again at the end with
                                           the same key, other content (count: distinct)
head_inserts               0               per catalog, items hidden at first, then inserted
                                           at the head one by one while pages are walked
head_insert_every          15              content-page requests between head inserts
tenants                    1               credentials, each with its own enterprise,
                                           catalogs (neighbours share one), learners, budget
tenant_rate_lms            ()              "T:RATE": tenant T's own LMS budget
forbid_tenants             ()              tenant indexes whose catalogs 403 (live)
fault_tenants              ()              faults hit only these tenants' requests (live)
slow_drip_ms               0               bodies sent one byte every N ms (0 = off)
slow_drip_rate             1.0             fraction of answers dripped when slow_drip_ms > 0
bomb_rate                  0.0             fraction of 2xx answers sent as a gzip bomb
bomb_mb                    64              MiB a bomb inflates to (trailing JSON whitespace)
=========================  ==============  ==================================================

``GET /__changes?from=A&to=B`` lists ``{op, catalog_uuid, content_type, key}`` (``upsert``
or ``delete``) for the real differences between two epochs; ``modified``,
``content_last_modified`` and the volatile counters move at every epoch regardless.
"""

from __future__ import annotations

from harvester.sim.app import build_app
from harvester.sim.config import FAULT_KINDS, SimConfig
from harvester.sim.rates import Rate, parse_rate
from harvester.sim.server import SimServer

__all__ = ["FAULT_KINDS", "Rate", "SimConfig", "SimServer", "build_app", "parse_rate"]
