"""POST /feedback (a user says what a photo shows), GET /feedback (is it on), and the review API
behind the /review page (label what waits without a label). Everything lands in the inbox that
`greenr inbox accept` turns into the next data version."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, File, Form, HTTPException, Path, Query, Request, Response, UploadFile
from starlette.concurrency import run_in_threadpool

from greenr.data.images import ImageError
from greenr.errors import GreenrError
from greenr.ops.inbox import InboxUnavailable, image_suffix
from serve.deps import BearerDep, FeedbackDep, ModelDep, StateDep
from serve.errors import clip
from serve.feedback import FeedbackService, InboxFull, RateLimited, Sent, client_identity, token_matches
from serve.prediction import STATUS_FOR_KIND, InputError, preprocess, read_upload
from serve.routes.predict import MULTIPART_OVERHEAD
from serve.schemas import Error, FeedbackConfig, FeedbackResult, LabelRequest, ReviewItem, ReviewList
from serve.settings import Settings

T = TypeVar("T")
SHA256 = r"^[0-9a-f]{64}$"
MEDIA_TYPES = {".jpg": "image/jpeg", ".png": "image/png", ".webp": "image/webp"}
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Error, "description": "not an image, truncated, or too many pixels"},
    401: {"model": Error, "description": "missing or wrong bearer token"},
    413: {"model": Error, "description": "over the upload size limit"},
    415: {"model": Error, "description": "image format other than JPEG, PNG or WebP"},
    422: {"description": "label (or predicted) is not one of the model's classes, or a field is malformed"},
    429: {
        "model": Error,
        "description": "over FEEDBACK_CLIENT_MAX_PER_HOUR (this client) or FEEDBACK_MAX_PER_HOUR (everyone); "
        "Retry-After says when to try again",
    },
    503: {"model": Error, "description": "feedback disabled, inbox full, store down, or no model yet"},
}


async def _inbox_call(func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a blocking inbox operation in a worker thread; its failures become 429/503, never a 500."""
    try:
        return await run_in_threadpool(func, *args, **kwargs)
    except RateLimited as exc:
        raise HTTPException(429, detail=str(exc), headers={"Retry-After": str(int(exc.retry_after) + 1)}) from None
    except InboxFull as exc:
        raise HTTPException(503, detail=str(exc), headers={"Retry-After": "3600"}) from None
    except InboxUnavailable as exc:
        raise HTTPException(
            503, detail=f"feedback not stored: {exc.what} (fix: {exc.fix})", headers={"Retry-After": "30"}
        ) from None
    except GreenrError as exc:  # e.g. the item was accepted meanwhile
        raise HTTPException(409, detail=exc.what) from None
    except OSError as exc:  # the local inbox folder
        raise HTTPException(503, detail=f"inbox unavailable: {exc}", headers={"Retry-After": "30"}) from None


def _check_class(name: str, value: str | None, classes: list[str]) -> None:
    if value is not None and value not in classes:
        raise HTTPException(
            422, detail=f"{name} {clip(value)!r} is not one of the model's classes: {', '.join(classes)}"
        )


def accepting_feedback(state: StateDep, feedback: FeedbackDep, token: BearerDep) -> FeedbackService:
    """503 while FEEDBACK is off; 401 without the right FEEDBACK_TOKEN when one is set."""
    settings = state.settings
    if not settings.feedback:
        raise HTTPException(503, detail="feedback is disabled on this server: set FEEDBACK=on to enable it")
    if settings.feedback_tokens and not token_matches(token, settings.feedback_tokens):
        raise HTTPException(401, detail="missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})
    return feedback


def reviewing(state: StateDep, feedback: FeedbackDep, token: BearerDep) -> FeedbackService:
    """403 while REVIEW_TOKEN is unset; 401 without it."""
    expected = state.settings.review_token
    if not expected:
        raise HTTPException(403, detail="review is disabled: set REVIEW_TOKEN to enable it")
    if not token_matches(token, expected):
        raise HTTPException(401, detail="missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})
    return feedback


AcceptingDep = Annotated[FeedbackService, Depends(accepting_feedback)]
ReviewDep = Annotated[FeedbackService, Depends(reviewing)]
ItemId = Annotated[str, Path(pattern=SHA256, description="the item's SHA-256")]


def build_router(settings: Settings) -> APIRouter:
    router = APIRouter(tags=["feedback"])

    @router.get("/feedback", response_model=FeedbackConfig)
    async def feedback_config(state: StateDep) -> dict:
        """Whether this server takes feedback (and needs a token), and whether review is on."""
        return {
            "enabled": state.settings.feedback,
            "token_required": bool(state.settings.feedback_tokens),
            "review_enabled": bool(state.settings.review_token),
        }

    @router.post(
        "/feedback",
        status_code=201,
        response_model=FeedbackResult,
        responses={200: {"model": FeedbackResult, "description": "the same photo was sent before"}, **ERRORS},
        max_body_size=settings.max_upload_bytes + MULTIPART_OVERHEAD,
    )
    async def send_feedback(
        service: AcceptingDep,
        state: StateDep,
        loaded: ModelDep,
        request: Request,
        token: BearerDep,
        response: Response,
        file: Annotated[UploadFile, File(description="the image, as sent to /predict")],
        label: Annotated[str, Form(description="what the image shows: one of the model's classes")],
        predicted: Annotated[str | None, Form(description="the label the model gave")] = None,
        confidence: Annotated[float | None, Form(ge=0, le=1, description="the model's confidence")] = None,
        model_sha256: Annotated[str | None, Form(pattern=SHA256, description="checkpoint that predicted")] = None,
    ) -> dict:
        """Store the image with this client's label in the inbox (201; 200 when it had the photo before).

        The image is read and decoded exactly like /predict, with the same limits and 4xx answers.
        Each client (its token, else its address) counts once per photo and label, and has its
        own rate limit; re-sending the same photo and label costs none of it.
        """
        _check_class("label", label, loaded.classes)
        _check_class("predicted", predicted, loaded.classes)
        client = client_identity(request, token, state.settings)
        try:
            data = await read_upload(file, state.settings.max_upload_bytes)
            resent = await run_in_threadpool(service.resent, client, data, label)  # hashes up to 10 MB
            if resent is not None:
                response.status_code = 200
                return {"id": resent[0], "status": "unchanged", "label": resent[1]}
            await preprocess(state, data, loaded)
            suffix = image_suffix(data)
        except InputError as err:
            raise HTTPException(err.status, detail=err.detail) from None
        except ImageError as err:
            raise HTTPException(STATUS_FOR_KIND.get(err.kind, 400), detail=err.reason) from None
        done = await _inbox_call(
            service.store,
            Sent(client, data, label),
            limits=service.feedback_limits,
            source="feedback",
            predicted=predicted,
            confidence=confidence,
            model_sha256=model_sha256,
            suffix=suffix,
        )
        response.status_code = 201 if done.status == "new" else 200
        return {"id": done.record.sha256, "status": done.status, "label": done.record.label}

    @router.get("/review/items", response_model=ReviewList, responses={401: {"model": Error}, 403: {"model": Error}})
    async def review_items(
        service: ReviewDep, loaded: ModelDep, limit: Annotated[int, Query(ge=1, le=500)] = 100
    ) -> dict:
        """Items that need a reviewer, oldest first: no label (uncertain captures), conflicting votes, or
        fewer agreeing votes than FEEDBACK_MIN_AGREEING."""
        inbox = await _inbox_call(service.inbox)
        records = await _inbox_call(inbox.to_review, limit)
        items = [
            ReviewItem(
                id=r.sha256,
                source=r.source,
                received=r.received,
                predicted=r.predicted,
                confidence=r.confidence,
                labels_given=r.labels_given,
                votes=r.vote_counts(),
            )
            for r in records
        ]
        return {"items": items, "classes": loaded.classes}

    @router.get("/review/items/{item_id}/image", responses={404: {"model": Error}})
    async def review_image(service: ReviewDep, item_id: ItemId) -> Response:
        inbox = await _inbox_call(service.inbox)
        record = await _inbox_call(inbox.record, item_id)
        data = None if record is None else await _inbox_call(inbox.image, record)
        if record is None or data is None:
            raise HTTPException(404, detail=f"no pending inbox item {item_id}")
        media_type = MEDIA_TYPES.get(record.suffix, "application/octet-stream")
        return Response(data, media_type=media_type, headers={"Cache-Control": "no-store"})

    @router.post("/review/items/{item_id}/label", response_model=FeedbackResult, responses={404: {"model": Error}})
    async def review_label(service: ReviewDep, loaded: ModelDep, item_id: ItemId, body: LabelRequest) -> dict:
        """A reviewer's label: final for this item."""
        _check_class("label", body.label, loaded.classes)
        inbox = await _inbox_call(service.inbox)
        if await _inbox_call(inbox.record, item_id) is None:
            raise HTTPException(404, detail=f"no pending inbox item {item_id}")
        record = await _inbox_call(inbox.set_label, item_id, body.label)
        return {"id": record.sha256, "status": "updated", "label": record.label}

    return router
