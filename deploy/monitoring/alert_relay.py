"""Alertmanager webhook -> Airflow REST API: the GreenrInputDrift alert triggers a retrain.

Alertmanager posts its own JSON (`{"alerts": [...], ...}`); Airflow 3's
`POST /api/v2/dags/{dag_id}/dagRuns` takes a strict body and a JWT from `POST /auth/token`, so
Alertmanager cannot call it directly. This relay (standard library only) turns every webhook call
with firing alerts of interest into one DAG run with conf `{"reason": "drift", "alerts": [...]}`:

    python deploy/monitoring/alert_relay.py          # listens on $HOST:$PORT (127.0.0.1:9095)

Environment:
    AIRFLOW_URL          Airflow's API server (default http://127.0.0.1:8080)
    AIRFLOW_USERNAME     a user allowed to trigger DAG runs, and AIRFLOW_PASSWORD
    AIRFLOW_DAG          the DAG to trigger (default greenr_feedback)
    RELAY_ALERTS         comma-separated alert names that trigger it (default GreenrInputDrift)
    RELAY_TOKEN          bearer token Alertmanager must send (alertmanager.yml: http_config.authorization)

Answers 200 when it triggered a run (or had nothing to do), 401 without the token, 400 for a body
that is not Alertmanager's, and 502 when Airflow fails, so Alertmanager retries.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger("alert_relay")


class AirflowError(Exception):
    pass


class Airflow:
    """Triggers DAG runs through Airflow 3's REST API, with a JWT fetched (and renewed) on demand."""

    def __init__(self, url: str, username: str, password: str, timeout: float = 30) -> None:
        self.url = url.rstrip("/")
        self.username = username
        self.password = password
        self.timeout = timeout
        self._token: str | None = None
        self._lock = threading.Lock()

    def _post(self, path: str, body: dict[str, Any], token: str | None = None) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(
            f"{self.url}{path}", data=json.dumps(body).encode(), headers=headers, method="POST"
        )
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            return json.loads(response.read() or b"{}")

    def _login(self) -> str:
        try:
            answer = self._post("/auth/token", {"username": self.username, "password": self.password})
        except urllib.error.HTTPError as err:
            raise AirflowError(f"Airflow refused the login of {self.username!r} ({err.code})") from None
        except OSError as err:
            raise AirflowError(f"Airflow at {self.url} is not answering: {err}") from None
        return str(answer["access_token"])

    def trigger(self, dag_id: str, conf: dict[str, Any], note: str) -> dict[str, Any]:
        body = {"logical_date": None, "conf": conf, "note": note}
        for attempt in range(2):
            with self._lock:
                if self._token is None:
                    self._token = self._login()
                token = self._token
            try:
                return self._post(f"/api/v2/dags/{dag_id}/dagRuns", body, token)
            except urllib.error.HTTPError as err:
                if err.code == 401 and attempt == 0:  # the JWT expired: log in again once
                    with self._lock:
                        self._token = None
                    continue
                detail = err.read().decode(errors="replace")[:300]
                raise AirflowError(f"Airflow answered {err.code} to the trigger of {dag_id}: {detail}") from None
            except OSError as err:
                raise AirflowError(f"Airflow at {self.url} is not answering: {err}") from None
        raise AirflowError("unreachable")


def firing(payload: Any, names: set[str]) -> list[dict[str, Any]]:
    """The firing alerts of interest in an Alertmanager webhook body (ValueError if it is not one)."""
    if not isinstance(payload, dict) or not isinstance(payload.get("alerts"), list):
        raise ValueError("not an Alertmanager webhook body (no alerts list)")
    return [
        {"labels": alert.get("labels", {}), "startsAt": alert.get("startsAt")}
        for alert in payload["alerts"]
        if isinstance(alert, dict)
        and alert.get("status") == "firing"
        and alert.get("labels", {}).get("alertname") in names
    ]


def make_handler(airflow: Airflow, dag_id: str, names: set[str], token: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _answer(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/health":
                self._answer(200, {"status": "ok"})
            else:
                self._answer(404, {"detail": "not found"})

        def do_POST(self) -> None:
            if self.path != "/alertmanager":
                self._answer(404, {"detail": "not found"})
                return
            scheme, _, given = (self.headers.get("Authorization") or "").partition(" ")
            if token and not (scheme.lower() == "bearer" and hmac.compare_digest(given.encode(), token.encode())):
                self._answer(401, {"detail": "missing or wrong bearer token"})
                return
            try:
                length = int(self.headers.get("Content-Length") or 0)
                alerts = firing(json.loads(self.rfile.read(min(length, 1_000_000)) or b"null"), names)
            except ValueError as err:
                self._answer(400, {"detail": str(err)})
                return
            if not alerts:
                self._answer(200, {"triggered": False})
                return
            note = "Alertmanager: " + ", ".join(sorted({a["labels"].get("alertname", "?") for a in alerts}))
            try:
                run = airflow.trigger(dag_id, {"reason": "drift", "alerts": alerts}, note)
            except AirflowError as err:
                log.error("%s", err)
                self._answer(502, {"detail": str(err)})
                return
            log.info("triggered %s run %s for %d alert(s)", dag_id, run.get("dag_run_id"), len(alerts))
            self._answer(200, {"triggered": True, "dag_run_id": run.get("dag_run_id")})

        def log_message(self, fmt: str, *args: Any) -> None:
            log.info("%s %s", self.address_string(), fmt % args)

    return Handler


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    env = os.environ
    url = env.get("AIRFLOW_URL", "http://127.0.0.1:8080")
    airflow = Airflow(url, env.get("AIRFLOW_USERNAME", ""), env.get("AIRFLOW_PASSWORD", ""))
    names = {n.strip() for n in env.get("RELAY_ALERTS", "GreenrInputDrift").split(",") if n.strip()}
    handler = make_handler(airflow, env.get("AIRFLOW_DAG", "greenr_feedback"), names, env.get("RELAY_TOKEN", ""))
    server = ThreadingHTTPServer((env.get("HOST", "127.0.0.1"), int(env.get("PORT", "9095"))), handler)
    log.info("relaying %s to %s on http://%s:%d/alertmanager", sorted(names), airflow.url, *server.server_address[:2])
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
