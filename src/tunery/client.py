"""A Python client for a tunery server: ``tunery.Client(url, key).predict([...])``."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx

from tunery.errors import TuneryError


class ApiError(TuneryError):
    """The server answered with an error: ``status`` (HTTP), ``code`` and ``message`` from its body."""

    def __init__(self, status: int, code: str, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status} {code}: {message}")
        self.status, self.code, self.message, self.retry_after = status, code, message, retry_after


class Client:
    """``Client(url, key)``; ``retries`` > 0 retries 429/503 and dropped connections, waiting as the
    server's Retry-After says, with one Idempotency-Key per call so a retry is never billed twice."""

    def __init__(self, url: str, key: str, *, timeout: float = 30.0, retries: int = 0, max_wait: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.key = key
        self.timeout = timeout
        self.retries = retries
        self.max_wait = max_wait
        self._http: httpx.Client | None = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

    @property
    def http(self) -> httpx.Client:
        if self._http is None:
            self._http = httpx.Client(base_url=self.url, timeout=self.timeout,
                                      headers={"Authorization": f"Bearer {self.key}"})
        return self._http

    def models(self) -> list[dict[str, Any]]:
        return self._call("GET", "/v1/models")["models"]

    def predict(self, texts: list[str] | str, *, model: str | None = None, pairs: list[str] | None = None,
                idempotency_key: str | None = None) -> list[dict[str, Any]] | dict[str, Any]:
        """One prediction per text (a single dict for a single string). ``model`` may be left out
        when the key can use exactly one model."""
        single = isinstance(texts, str)
        if single:
            texts, pairs = [texts], [pairs] if isinstance(pairs, str) else pairs
        predictions = self.predict_full(texts, model=model, pairs=pairs, idempotency_key=idempotency_key)["predictions"]
        return predictions[0] if single else predictions

    def predict_full(self, texts: list[str], *, model: str | None = None, pairs: list[str] | None = None,
                     idempotency_key: str | None = None) -> dict[str, Any]:
        """The whole response: predictions, usage, request id and the model version that answered."""
        if model is None:
            names = [m["name"] for m in self.models()]
            if len(names) != 1:
                raise ValueError(f"this key can use models {names}: choose one with model=...")
            model = names[0]
        body: dict[str, Any] = {"texts": list(texts)}
        if pairs is not None:
            body["pairs"] = list(pairs)
        if idempotency_key is None and self.retries:
            idempotency_key = uuid.uuid4().hex
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._call("POST", f"/v1/models/{model}/predict", json=body, headers=headers)

    def usage(self, *, start: str | None = None, end: str | None = None, tenant: str | None = None) -> dict[str, Any]:
        params = {k: v for k, v in (("from", start), ("to", end), ("tenant", tenant)) if v is not None}
        return self._call("GET", "/v1/usage", params=params)

    def _call(self, method: str, path: str, **kwargs) -> Any:
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                response = self.http.request(method, path, **kwargs)
            except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError) as e:
                if last:
                    raise ApiError(0, "connection_failed", f"{self.url}{path}: {e}") from None
                time.sleep(min(self.max_wait, 0.5 * 2**attempt))
                continue
            if response.status_code < 400:
                return response.json()
            error = _error_of(response)
            if response.status_code in (429, 503) and not last and (error.retry_after or 1) <= self.max_wait:
                time.sleep(error.retry_after or 1)
                continue
            raise error
        raise AssertionError("unreachable")


def _error_of(response: httpx.Response) -> ApiError:
    try:
        body = response.json()["error"]
        code, message = str(body["code"]), str(body["message"])
    except Exception:
        code, message = "http_error", response.text[:500]
    retry = response.headers.get("Retry-After")
    return ApiError(response.status_code, code, message,
                    retry_after=float(retry) if retry and retry.replace(".", "", 1).isdigit() else None)
