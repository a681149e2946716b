"""GET /: a page to drop an image on, see the label and probabilities, and say whether it is right;
GET /review: label what waits in the feedback inbox (its data needs REVIEW_TOKEN)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

router = APIRouter(tags=["page"])
STATIC = Path(__file__).resolve().parents[1] / "static"


@router.get("/", include_in_schema=False)
async def index() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html")


@router.get("/review", include_in_schema=False)
async def review() -> FileResponse:
    return FileResponse(STATIC / "review.html", media_type="text/html")
