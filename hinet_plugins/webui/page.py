"""The gradio page: upload images (and optional ground truths), pick a model and its switches, restore, compare
input and result with a before/after slider, read PSNR/SSIM, download the restored files.

Decisions: uploads come in as files (``gr.File``), not as decoded images, so 16-bit depth and alpha reach the
network and the download as ``scripts/inference.py`` keeps them; the slider shows 8-bit previews. One model is
kept loaded (the last used). Each run writes into its own folder under the page's temporary folder, removed when
the server stops. Every error is one line in the status box; the server keeps serving. The page never fetches
anything (gradio's bundled assets and fonts, analytics off) and listens on the given host only (no share link).
"""
import os
import shutil
import tempfile
import threading
from typing import Any, Callable, Iterable, List, Optional, Sequence, Tuple, Union

from ..errors import ConfigError, one_line
from ..restore import Restorer
from .jobs import MAX_PIXELS, UploadError, pair_ground_truths, restore_file
from .models import Model, load_restorer

os.environ['GRADIO_ANALYTICS_ENABLED'] = 'False'  # before gradio is imported: no usage reports, no version check


def parse_tile(text: Any) -> Optional[Union[int, str]]:
    """'auto' / '' (whole image) / a size in pixels -> the ``Restorer`` tile; ConfigError otherwise."""
    text = str(text or '').strip().lower()
    if text in ('', 'none', 'off'):
        return None
    if text == 'auto':
        return 'auto'
    if text.isdigit() and int(text) > 0:
        return int(text)
    raise ConfigError(f"tile: expected auto, a size in pixels or nothing (whole image), got '{text}'")


class RestorePage:
    """The page's state (models, device, loaded model, work folder) and its event handlers."""

    def __init__(self, models: Iterable[Model], device: str = 'cpu', max_pixels: int = MAX_PIXELS,
                 work_dir: Optional[str] = None) -> None:
        self.models = {m.label: m for m in models}
        self.device, self.max_pixels = device, max_pixels
        self.work_dir = work_dir or tempfile.mkdtemp(prefix='hinet_webui_')
        self._loaded, self._lock, self._runs = (None, None), threading.Lock(), 0

    def restorer(self, label: str, tlc: bool, train_size: Optional[int], self_ensemble: bool, amp: Optional[str],
                 tile: Optional[Union[int, str]]) -> Restorer:
        """The Restorer for these choices (the last one is kept loaded); ConfigError for a bad choice."""
        if label not in self.models:
            raise ConfigError(f"model: '{label}' is not one of the models offered")
        key = (label, bool(tlc), train_size or None, bool(self_ensemble), amp, tile)
        if self._loaded[0] != key:
            self._loaded = (None, None)  # free the previous network first
            restorer = load_restorer(self.models[label], self.device, tlc=tlc, train_size=train_size,
                                     tile=tile, self_ensemble=bool(self_ensemble), amp=amp, channel_order='bgr')
            self._loaded = (key, restorer)
        return self._loaded[1]

    def run(self, files: Optional[Sequence[str]], truths: Optional[Sequence[str]], label: str, tlc: bool,
            train_size: Optional[int], self_ensemble: bool, amp: str, tile: Any,
            progress: Optional[Callable] = None) -> Tuple[List[str], List[dict]]:
        """Restore the uploads: (status lines, results) where results are ``jobs.restore_file`` dicts."""
        files = [f for f in (files or []) if f]
        if not files:
            return ['upload one or more images first'], []
        try:
            restorer = self.restorer(label, tlc, train_size, self_ensemble, None if amp == 'none' else amp,
                                     parse_tile(tile))
        except Exception as err:  # noqa: BLE001  (a model that fails to load: one line, the server goes on)
            return [f"model '{label}': {one_line(err)}"], []
        with self._lock:
            self._runs += 1
            out_dir = os.path.join(self.work_dir, f'run{self._runs}')
        os.makedirs(out_dir)
        pairs = pair_ground_truths(files, [t for t in (truths or []) if t])
        lines, results = [], []
        for i, path in enumerate(files):
            if progress is not None:
                progress((i, len(files)), desc=f'restoring {os.path.basename(path)}', unit='image')
            try:
                results.append(restore_file(restorer, path, out_dir, pairs.get(path), self.max_pixels))
                if results[-1]['note']:
                    lines.append(results[-1]['note'])
            except UploadError as err:
                lines.append(str(err))
            except Exception as err:  # noqa: BLE001  (the model failed on this image: say so, go on)
                lines.append(f"{os.path.basename(path)}: model '{label}' failed: {one_line(err)}")
        done = f'{len(results)} of {len(files)} image(s) restored with {restorer.description}'
        plan = getattr(restorer, 'last_plan', None) if restorer.tile == 'auto' else None
        if plan and results:
            done += f" (last image: {'tile ' + str(plan['tile']) if plan['tile'] else 'whole image'})"
        return [done] + lines, results

    def build(self) -> Any:
        """The gradio Blocks of the page."""
        import gradio as gr
        labels = list(self.models)
        with gr.Blocks(title='hinet-plugins: restore images', analytics_enabled=False) as page:
            gr.Markdown('## Restore images\nUpload images, pick a model, press *Restore*. The restored files keep '
                        'the input format (16-bit and alpha included).')
            with gr.Row():
                with gr.Column():
                    files = gr.File(label='Images', file_count='multiple', type='filepath', elem_id='images')
                    truths = gr.File(label='Ground truth (optional; same file name, or one for one image)',
                                     file_count='multiple', type='filepath', elem_id='truths')
                with gr.Column():
                    model = gr.Dropdown(labels, value=labels[0] if labels else None, label='Model',
                                        elem_id='model')
                    with gr.Row():
                        tlc = gr.Checkbox(label='TLC (test-time local converter)', elem_id='tlc')
                        train_size = gr.Number(label="TLC training patch size (0: the option file's val.tlc)",
                                               precision=0, value=None, elem_id='train_size')
                    ensemble = gr.Checkbox(label='x8 self-ensemble', elem_id='ensemble')
                    amp = gr.Radio(['none', 'bf16', 'fp16'], value='none', label='amp', elem_id='amp')
                    tile = gr.Textbox('auto', label='Tile: auto (fits the memory), a size, or empty (whole image)',
                                      elem_id='tile')
                    button = gr.Button('Restore', variant='primary', elem_id='run')
            status = gr.Textbox(label='Status', lines=2, interactive=False, elem_id='status')
            shown = gr.Dropdown([], label='Shown image', elem_id='shown')
            slider = gr.ImageSlider(label='Input | restored', type='filepath', format='png', max_height=420,
                                    elem_id='slider')
            scores = gr.Markdown(elem_id='metrics')
            downloads = gr.File(label='Restored files', file_count='multiple', interactive=False,
                                elem_id='downloads')
            results = gr.State([])

            def on_run(files, truths, label, tlc, train_size, ensemble, amp, tile,
                       progress=gr.Progress(track_tqdm=True)):
                lines, res = self.run(files, truths, label, tlc, train_size, ensemble, amp, tile, progress)
                names = [r['name'] for r in res]
                return ('\n'.join(lines), gr.update(choices=names, value=names[0] if names else None),
                        (res[0]['input'], res[0]['restored']) if res else None, metrics_table(res),
                        [r['file'] for r in res] or None, res)

            def on_show(name, res):
                hit = next((r for r in res if r['name'] == name), None)
                return (hit['input'], hit['restored']) if hit else None

            button.click(on_run, [files, truths, model, tlc, train_size, ensemble, amp, tile],
                         [status, shown, slider, scores, downloads, results])
            shown.input(on_show, [shown, results], slider)
        return page

    def launch(self, host: str = '127.0.0.1', port: int = 7860, max_file_size: str = '512mb', **kw) -> Any:
        """Serve the page on ``host``:``port`` (never a public share link); blocks unless prevent_thread_lock."""
        page = self.build()
        page.queue(default_concurrency_limit=1)
        return page.launch(server_name=host, server_port=port, share=False, inbrowser=False,
                           max_file_size=max_file_size, allowed_paths=[self.work_dir], show_error=False, **kw)

    def close(self) -> None:
        shutil.rmtree(self.work_dir, ignore_errors=True)


def metrics_table(results: List[dict]) -> str:
    rows = [r for r in results if r['psnr'] is not None]
    if not rows:
        return ''
    return '| image | PSNR (dB) | SSIM |\n|---|---|---|\n' + '\n'.join(
        f"| {r['name']} | {r['psnr']:.2f} | {r['ssim']:.4f} |" for r in rows)
