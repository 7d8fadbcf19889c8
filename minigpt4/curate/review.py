"""Step 4, the human check: a local web page to approve, edit or reject each kept description.

`create_app(out_dir)` is a small FastAPI app over the run's store: the page (static/review.html)
shows the image, the model's raw text and the fixed text side by side; every decision is POSTed
and committed to the store at once, so closing the browser or killing the server loses nothing.
`serve()` runs it with uvicorn on localhost and re-exports filter_cap.json when it stops.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from minigpt4.curate.store import Item, Store

STATIC = Path(__file__).parent / "static"
DECISIONS = {"approve": "approved", "edit": "edited", "reject": "rejected", "undo": None}


def item_json(item: Item) -> dict[str, Any]:
    return {"id": item.id, "seq": item.seq, "raw_text": item.raw_text, "raw_first": item.raw_first,
            "continued": item.continued, "fix_text": item.fix_text, "fixer": item.fixer,
            "final_text": item.final_text, "filter_rules": item.filter_rules, "fix_edits": item.fix_edits,
            "review": item.review, "review_text": item.review_text, "caption": item.caption,
            "reviewer": item.reviewer, "review_reason": item.review_reason,
            "image_url": f"/image/{item.id}"}


def progress(store: Store) -> dict[str, int]:
    c = store.counts("review")
    kept = store.count("filter_status='kept'")
    done = sum(c.get(k, 0) for k in ("approved", "edited", "rejected"))
    return {"total": kept, "reviewed": done, "pending": kept - done, "approved": c.get("approved", 0),
            "edited": c.get("edited", 0), "rejected": c.get("rejected", 0)}


def create_app(out_dir: str | Path):
    from fastapi import Body, FastAPI, HTTPException
    from fastapi.responses import FileResponse, HTMLResponse

    store = Store(out_dir, create=False)
    app = FastAPI(title="minigpt4 curate review")
    app.state.store = store

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return (STATIC / "review.html").read_text(encoding="utf-8")

    @app.get("/api/items")
    def items(show: str = "all") -> dict[str, Any]:
        """Ids and decisions of the items up for review; show = all | pending | reviewed."""
        where = {"all": "filter_status='kept'", "pending": "filter_status='kept' AND review IS NULL",
                 "reviewed": "filter_status='kept' AND review IS NOT NULL"}.get(show)
        if where is None:
            raise HTTPException(400, f"show must be all, pending or reviewed, not '{show}'")
        return {"items": [{"id": i.id, "review": i.review} for i in store.items(where)],
                "progress": progress(store)}

    @app.get("/api/items/{item_id}")
    def one(item_id: str) -> dict[str, Any]:
        try:
            return item_json(store.get(item_id))
        except KeyError as e:
            raise HTTPException(404, str(e)) from None

    @app.post("/api/items/{item_id}/decision")
    def decide(item_id: str, body: dict[str, Any] = Body(...)) -> dict[str, Any]:
        action = body.get("action")
        if action not in DECISIONS:
            raise HTTPException(400, f"action must be one of {sorted(DECISIONS)}, not {action!r}")
        try:
            item = store.set_review(item_id, DECISIONS[action], body.get("text"))
        except KeyError as e:
            raise HTTPException(404, str(e)) from None
        except ValueError as e:
            raise HTTPException(400, str(e)) from None
        return {"item": item_json(item), "progress": progress(store)}

    @app.get("/image/{item_id}")
    def image(item_id: str):
        try:
            item = store.get(item_id)
        except KeyError as e:
            raise HTTPException(404, str(e)) from None
        path = store.out_dir / (item.image_file or "")
        if not item.image_file or not path.is_file():
            raise HTTPException(404, f"no image file for '{item_id}'")
        return FileResponse(path, media_type="image/jpeg")

    return app


def serve(out_dir: str | Path, host: str = "127.0.0.1", port: int = 8765, require_review: bool = True) -> None:
    import uvicorn

    from minigpt4.curate.export import export
    app = create_app(out_dir)
    print(f"review page: http://{host}:{port}/  (a approve, e edit, r reject, u undo, j/k next/prev; Ctrl+C to stop)")
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        report = export(app.state.store, require_review)
        print(f"exported {report['exported']} item(s) to {Path(out_dir) / 'filter_cap.json'}")
