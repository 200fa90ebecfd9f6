"""The inference service without HTTP: the API key check, and inference through a batcher
that answers with the outputs and the facts of the call (nothing is written elsewhere)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from app.errors import Forbidden, InferenceTimeout, Unauthenticated
from app.monitoring.service_metrics import ServiceMetrics
from app.service import InferenceResult, InferenceService
from app.serving.batching import Batcher
from app.serving.repository import ModelRepository, ServedModel
from servekit import make_settings

KEY = "a-long-enough-key"


def service(tmp_path: Path, **settings: Any) -> InferenceService:
    values = make_settings(tmp_path, **settings)
    return InferenceService(values, ModelRepository(values, ServiceMetrics(CollectorRegistry())))


def test_api_key_check(tmp_path: Path) -> None:
    open_service = service(tmp_path)
    open_service.check_api_key(None)
    assert open_service.has_access(None) and open_service.has_access("anything")

    keyed = service(tmp_path, api_key=KEY)
    keyed.check_api_key(KEY)
    with pytest.raises(Unauthenticated, match="got none") as missing:
        keyed.check_api_key(None)
    assert missing.value.status == 401 and missing.value.headers == {"WWW-Authenticate": "Bearer"}
    with pytest.raises(Forbidden, match="not valid") as wrong:
        keyed.check_api_key(KEY + "x")
    assert wrong.value.status == 403
    assert keyed.has_access(KEY) and not keyed.has_access(None) and not keyed.has_access("x" * 20)


def row_sums(batch: np.ndarray, heads: bool = False) -> dict[str, np.ndarray]:
    return {"sum": batch.reshape(len(batch), -1).sum(axis=1)}


def test_infer_answers_outputs_and_batch_facts(tmp_path: Path) -> None:
    svc = service(tmp_path)

    async def main() -> list[InferenceResult]:
        batcher = Batcher(row_sums, max_batch_size=64, max_delay_s=0.05, queue_size=10, label="t")
        batcher.start()
        served = ServedModel(model=cast(Any, None), batcher=batcher)
        a = np.ones((2, 4), np.float32)
        b = 2 * np.ones((3, 4), np.float32)
        results = await asyncio.gather(svc.infer(served, a), svc.infer(served, b))
        await batcher.close()
        return list(results)

    first, second = asyncio.run(main())
    assert (first.instances, second.instances) == (2, 3)
    assert first.batch_size == second.batch_size == 5  # one ONNX Runtime call for both
    np.testing.assert_allclose(first.outputs["sum"], [4.0, 4.0])
    np.testing.assert_allclose(second.outputs["sum"], [8.0, 8.0, 8.0])
    assert 0.0 <= first.queue_wait_s < 5.0 and 0.0 <= second.queue_wait_s < 5.0


def test_infer_is_bounded_by_the_request_timeout(tmp_path: Path) -> None:
    svc = service(tmp_path, request_timeout_s=0.05)

    def slow(batch: np.ndarray, heads: bool = False) -> dict[str, np.ndarray]:
        time.sleep(0.3)
        return row_sums(batch)

    async def main() -> None:
        batcher = Batcher(slow, max_batch_size=64, max_delay_s=0.0, queue_size=10, label="t")
        batcher.start()
        try:
            with pytest.raises(InferenceTimeout, match="request_timeout_s=0.05s"):
                await svc.infer(ServedModel(model=cast(Any, None), batcher=batcher),
                                np.ones((1, 4), np.float32))
        finally:
            await batcher.close()

    asyncio.run(main())
