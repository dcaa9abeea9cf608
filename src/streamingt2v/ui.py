"""``streamingt2v ui``: a local web app on top of the library (Gradio).

Type a prompt (or a prompt timeline), see the predicted time and memory, start, watch each
chunk appear as it is made, stop (the chunks made are kept as a playable video with its
manifest), download; browse the runs in the output folder and resume, extend or branch
them. Every run goes through one ``jobs.JobQueue`` on one loaded model: one generation at a
time, the others queued with their position shown, in any number of browser tabs. Files
are written only in the output folder, under names the app makes.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

from .config import UsageError
from .jobs import Job, JobQueue
from .run_config import GenerateConfig, recorded_settings

POLL_SECONDS = 0.5


class App:
    """The app's state and actions, apart from the page (so they can be tested alone)."""

    def __init__(self, model: Path | None, out_dir: Path, device: str = "auto"):
        from .generate import generate, load_models

        self.model, self.device = model, device
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.queue = JobQueue(self.out_dir, load_models, generate)

    def defaults(self) -> dict[str, float]:
        """The model's sampling defaults, shown in the page's fields."""
        from .pipeline import read_pipeline_config
        from .runtime import resolve_model_dir

        sample = read_pipeline_config(resolve_model_dir(self.model)).sample
        stream_guidance = (
            sample.guidance if sample.stream_guidance is None else sample.stream_guidance
        )
        return {
            "steps": sample.steps,
            "guidance": sample.guidance,
            "stream_guidance": stream_guidance,
        }

    def config(self, **values: Any) -> GenerateConfig:
        """A run's settings, checked (UsageError), writing to a new file in the folder."""
        values = {k: v for k, v in values.items() if v is not None}
        values.setdefault("out", self.queue.new_output())
        return GenerateConfig(model=self.model, device=self.device, progress=False, **values)

    def page_config(self, prompt: str, timeline: str, frames: float | None,
                    seed: float | None, steps: float | None, guidance: float | None,
                    stream_guidance: float | None, enhance: bool) -> GenerateConfig:  # fmt: skip
        """A run from the page's fields (numbers come as floats, blanks as None)."""
        values = dict(
            num_frames=_int(frames, "frames"),
            seed=_int(seed, "seed"),
            steps=_int(steps, "steps"),
            guidance=guidance,
            stream_guidance=stream_guidance,
            enhance=enhance,
        )
        if timeline and timeline.strip():
            if prompt and prompt.strip():
                raise UsageError("give a prompt or a timeline, not both")
            values["timeline"] = self._timeline_file(timeline)
        else:
            values["prompt"] = prompt or ""
        return self.config(**values)

    def start(self, *fields: Any) -> Job:
        """Queue a run from the page's fields (``page_config``'s)."""
        config = self.page_config(*fields)
        return self.queue.submit(config, "timeline" if config.timeline else config.prompt.strip())

    def plan(self, *fields: Any) -> str:
        """The predicted time and memory of a run from the page's fields."""
        from .generate import plan_run
        from .plan import format_plan

        return format_plan(plan_run(self.page_config(*fields)))

    def _timeline_file(self, text: str) -> Path:
        """The timeline typed in the page, checked and kept in the folder."""
        from .timeline import Timeline

        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise UsageError(f"the timeline is not JSON: {err}") from None
        timeline = Timeline.from_dict(data)
        folder = self.out_dir / "timelines"
        folder.mkdir(exist_ok=True)
        path = folder / f"{secrets.token_hex(6)}.json"
        path.write_text(json.dumps(timeline.to_dict(), indent=2))
        return path

    def runs(self) -> list[str]:
        """The videos in the output folder with a manifest, newest first (their names)."""
        found = [m for m in self.out_dir.glob("*.json") if Path(str(m)[: -len(".json")]).exists()]
        found.sort(key=lambda m: m.stat().st_mtime, reverse=True)
        return [m.name[: -len(".json")] for m in found]

    def run_path(self, name: str) -> Path:
        """A run of the folder by name; never a path outside it."""
        if not name or name not in self.runs():
            raise UsageError(f"no run {name!r} in {self.out_dir}")
        return self.out_dir / name

    def manifest(self, name: str) -> dict:
        return json.loads((self.out_dir / f"{name}.json").read_text())

    def resume(self, name: str) -> Job:
        video = self.run_path(name)
        made = self.manifest(name)
        settings = self._settings(video, made)
        config = self.config(**settings, num_frames=made["requested_frames"], out=video,
                             resume=True, enhance=False)  # fmt: skip
        return self.queue.submit(config, f"resume {name}")

    def extend(self, name: str, frames: float | None) -> Job:
        video = self.run_path(name)
        settings = self._settings(video, self.manifest(name))
        config = self.config(**settings, num_frames=_int(frames, "frames"), extend=video,
                             enhance=False)  # fmt: skip
        return self.queue.submit(config, f"extend {name}")

    def branch(self, name: str, chunk: float | None, seed: float | None) -> Job:
        video = self.run_path(name)
        made = self.manifest(name)
        settings = self._settings(video, made) | {"seed": _int(seed, "seed")}
        config = self.config(**settings, num_frames=made["frames"], branch=video,
                             branch_chunk=_int(chunk, "chunk"), enhance=False)  # fmt: skip
        return self.queue.submit(config, f"branch {name}")

    def _settings(self, video: Path, made: dict) -> dict:
        settings = recorded_settings(video)
        settings.pop("model", None)  # the app's own model
        if made.get("timeline"):
            settings.pop("prompt", None)
            settings["timeline"] = self._timeline_file(json.dumps(made["timeline"]))
        return settings

    def status(self, job_id: str | None) -> dict:
        """What the page shows of a tab's job: a line of text, the latest preview, and the
        video and manifest when it has ended."""
        counts = self.queue.counts()
        queue = f"queue: {counts['running']} running, {counts['queued']} waiting"
        job = self.queue.get(job_id)
        if job is None:
            return {"text": f"ready ({queue})", "preview": None, "video": None, "files": None}
        text = _describe(job, self.queue.position(job))
        ended = job.result is not None
        files = [str(job.result.video), str(job.result.manifest)] if ended else None
        video = str(job.result.video) if ended and job.result.video.suffix == ".mp4" else None
        preview = str(job.preview) if job.preview else None
        return {"text": f"{text} ({queue})", "preview": preview, "video": video, "files": files}


def _int(value: float | None, name: str) -> int | None:
    if value is None:
        return None
    if float(value) != int(value):
        raise UsageError(f"{name} must be a whole number, got {value}")
    return int(value)


def _describe(job: Job, position: int) -> str:
    if job.state == "queued":
        return f"waiting: position {position} in the queue"
    if job.state == "running":
        left = "" if job.seconds_left is None else f", about {job.seconds_left:.0f} s left"
        return f"making {job.label!r}: frame {job.frames_done} of {job.frames_total}{left}"
    if job.state == "failed":
        return f"error: {job.error}"
    if job.state == "stopped":
        kept = job.result.frames if job.result else 0
        return f"stopped: kept {kept} frames" + (f" in {job.result.video.name}" if kept else "")
    return f"done: {job.result.frames} frames in {job.result.video.name}"


def build(app: App):
    """The page (a ``gradio.Blocks``)."""
    import gradio as gr

    def guarded(action):
        """Run a page action; a UsageError becomes the message line, not a stack trace."""

        def run(job_id, *args):
            try:
                job = action(*args)
            except UsageError as err:
                return job_id, f"error: {err}"
            return job.id, f"queued: {job.label}"

        return run

    def refresh(job_id):
        state = app.status(job_id)
        return state["text"], state["preview"], state["video"], state["files"]

    def plan(*args):
        try:
            return f"```\n{app.plan(*args)}\n```"
        except UsageError as err:
            return f"error: {err}"

    def show_run(name):
        try:
            video = app.run_path(name)
        except UsageError:
            return None, None
        playable = str(video) if video.suffix == ".mp4" else None
        return playable, app.manifest(name)

    defaults = app.defaults()
    with gr.Blocks(title="StreamingT2V") as page:
        job = gr.State(None)
        gr.Markdown("# StreamingT2V\nA long video from a text prompt, chunk by chunk.")
        with gr.Tab("Generate"), gr.Row():
            with gr.Column(scale=2):
                prompt = gr.Textbox(label="Prompt", elem_id="prompt")
                with gr.Accordion("Prompt timeline (instead of a prompt)", open=False):
                    timeline = gr.Code(
                        label='{"segments": [{"prompt": ..., "frames": ...}, ...]}',
                        language="json",
                    )
                with gr.Row():
                    frames = gr.Number(80, label="Frames", precision=0, elem_id="frames")
                    seed = gr.Number(0, label="Seed", precision=0)
                    steps = gr.Number(
                        defaults["steps"], label="Steps", precision=0, elem_id="steps"
                    )
                with gr.Row():
                    guidance = gr.Number(defaults["guidance"], label="Guidance")
                    stream_guidance = gr.Number(
                        defaults["stream_guidance"], label="Stream guidance"
                    )
                    enhance = gr.Checkbox(True, label="Enhance (if the model has one)")
                fields = [prompt, timeline, frames, seed, steps, guidance, stream_guidance,
                          enhance]  # fmt: skip
                with gr.Row():
                    plan_button = gr.Button("Plan")
                    start_button = gr.Button("Generate", variant="primary", elem_id="start")
                    stop_button = gr.Button("Stop", variant="stop", elem_id="stop")
                message = gr.Markdown(elem_id="message")
                plan_text = gr.Markdown(elem_id="plan")
            with gr.Column(scale=3):
                status = gr.Markdown("ready", elem_id="status")
                preview = gr.Image(
                    label="Latest chunk", type="filepath", height=256, elem_id="preview"
                )
                video = gr.Video(label="Video", height=320, elem_id="video")
                files = gr.File(label="Download", file_count="multiple", elem_id="files")
        with gr.Tab("Runs"):
            with gr.Row():
                runs = gr.Dropdown(label="Run", choices=[], elem_id="runs")
                refresh_runs = gr.Button("Refresh")
            run_video = gr.Video(label="Video", height=320)
            run_manifest = gr.JSON(label="Manifest")
            with gr.Row():
                resume_button = gr.Button("Resume")
                extend_frames = gr.Number(160, label="Extend to frames", precision=0)
                extend_button = gr.Button("Extend")
                branch_chunk = gr.Number(1, label="Branch from chunk", precision=0)
                branch_seed = gr.Number(1, label="with seed", precision=0)
                branch_button = gr.Button("Branch")
            run_status = gr.Markdown()

        plan_button.click(plan, fields, plan_text)
        start_button.click(guarded(app.start), [job, *fields], [job, message])
        stop_button.click(lambda j: app.queue.stop(j) if j else None, job, None)
        gr.Timer(POLL_SECONDS).tick(refresh, job, [status, preview, video, files])
        refresh_runs.click(lambda: gr.Dropdown(choices=app.runs()), None, runs)
        runs.change(show_run, runs, [run_video, run_manifest])
        resume_button.click(guarded(app.resume), [job, runs], [job, run_status])
        extend_button.click(guarded(app.extend), [job, runs, extend_frames], [job, run_status])
        branch_button.click(
            guarded(app.branch), [job, runs, branch_chunk, branch_seed], [job, run_status]
        )
    return page


def serve(
    model: Path | None,
    out_dir: Path,
    host: str = "127.0.0.1",
    port: int | None = None,
    device: str = "auto",
    block: bool = True,
):
    """Start the app; ``block=False`` returns (the page, its URL) with it running."""
    app = App(model, out_dir, device)
    page = build(app)
    page.queue(default_concurrency_limit=None)
    _, url, _ = page.launch(
        server_name=host,
        server_port=port,
        prevent_thread_lock=not block,
        allowed_paths=[str(app.out_dir.resolve())],
        quiet=True,
    )
    return page, url
