#!/usr/bin/env python3
#   AutoRetouch for GIMP 3: automatic face retouching by a local AutoRetouch server.
#
#   Filters ▸ Enhance ▸ AutoRetouch… sends the active layer to the server started with
#   `autoretouch-server` and puts the retouched pixels back at the image's own precision,
#   through the selection when there is one.  Scripts call the same procedure, "plug-in-autoretouch", with the arguments
#   strength, output-mode and server-url.
#
#   Only this file calls GIMP.  Pixel formats, regions and messages live in
#   autoretouch_protocol.py; the wire contract, the errors and the HTTP client are the server
#   package's own modules, copied beside this file at install (autoretouch_wire.py,
#   autoretouch_errors.py, autoretouch_client.py).  See docs/gimp.md.

import gi
gi.require_version('Gimp', '3.0')
from gi.repository import Gimp
gi.require_version('GimpUi', '3.0')
from gi.repository import GimpUi
gi.require_version('Gegl', '0.4')
from gi.repository import Gegl
gi.require_version('Babl', '0.1')
from gi.repository import Babl
from gi.repository import GObject
from gi.repository import GLib
from gi.repository import Gio
import os
import queue
import sys
import threading
import time

import autoretouch_client as client
import autoretouch_protocol as protocol
import autoretouch_wire as wire
from autoretouch_errors import BadImageError
from autoretouch_watchdog import Watchdog

PROC_NAME = "plug-in-autoretouch"
LAYER_NAME = "AutoRetouch"
# A global parasite, persistent across sessions: the settings last confirmed with OK.
CONFIRMED = "autoretouch-confirmed-settings"
HELP_DOMAIN = "plug-in-autoretouch-help"


def N_(message): return message
def _(message): return GLib.dgettext(None, message)


def autoretouch_run(procedure, run_mode, image, drawables, config, data):
    started = time.monotonic()
    if run_mode == Gimp.RunMode.INTERACTIVE:
        _apply(config, _confirmed(_settings(config)))
        if not _dialog(procedure, config):
            return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, GLib.Error())
        started = time.monotonic()
        # Stored now, not after the run: GIMP keeps a run's values only when it succeeds, and a
        # run cancelled from the progress bar would leave Repeat with an older run's settings.
        Gimp.attach_parasite(Gimp.Parasite.new(CONFIRMED, Gimp.PARASITE_PERSISTENT,
                                               protocol.confirmed_settings(_settings(config))))
    elif run_mode == Gimp.RunMode.WITH_LAST_VALS:
        _apply(config, _confirmed(_settings(config)))
    settings = _settings(config)
    try:
        layer = _target_layer(drawables, settings.mode)
        options = wire.RetouchOptions(strength=settings.strength, mask=(settings.mode == "new-layer-skin-mask"))
        server = client.Client(settings.url)
        job = _read_layer(image, layer)
        reply = _retouch_off_main_thread(server, job.prepared.body, options)
        if reply.faces == 0:
            Gimp.message(protocol.NO_FACE_MESSAGE)
            return procedure.new_return_values(Gimp.PDBStatusType.SUCCESS, GLib.Error())
        pixels = protocol.decode_reply(reply.body, job.region.width, job.region.height, job.fmt,
                                       job.prepared.kept_alpha)
        mask = None if reply.mask is None else protocol.decode_mask(
            reply.mask, job.region.width, job.region.height, job.fmt)
    except Exception as err:  # typed errors and bugs alike: the image is untouched so far
        return _error(procedure, protocol.user_message(err, settings.url))

    # Everything that can fail for an outside reason has happened: now change the image.
    Gimp.context_push()
    image.undo_group_start()
    try:
        _write_result(image, layer, job, pixels, settings.mode, mask)
    except Exception as err:  # a bug: say so rather than report success
        return _error(procedure, f"AutoRetouch could not write the result: {err!r}. "
                                 "Please report this; Edit ▸ Undo reverts any partial change.")
    finally:
        image.undo_group_end()
        Gimp.context_pop()
    Gimp.displays_flush()
    changed = protocol.changed_fraction(job.before, pixels, job.fmt.channels * job.fmt.itemsize,
                                        mask, job.fmt.itemsize)
    Gimp.message(protocol.summary(settings.mode, reply.faces or 0, changed, time.monotonic() - started,
                                  repeat=run_mode == Gimp.RunMode.WITH_LAST_VALS))
    return procedure.new_return_values(Gimp.PDBStatusType.SUCCESS, GLib.Error())


def _settings(config):
    return protocol.Settings(config.get_property('strength'), config.get_property('output-mode'),
                             config.get_property('server-url'))


def _confirmed(last):
    parasite = Gimp.get_parasite(CONFIRMED)
    return protocol.repeat_settings(bytes(parasite.get_data()) if parasite else None, last)


def _apply(config, settings):
    config.set_property('strength', settings.strength)
    config.set_property('output-mode', settings.mode)
    config.set_property('server-url', settings.url)


def _dialog(procedure, config):
    """The dialog, with a 0.05-step strength slider; True when the user pressed OK."""
    GimpUi.init(PROC_NAME)
    dialog = GimpUi.ProcedureDialog(procedure=procedure, config=config, title=_("AutoRetouch"))
    strength = dialog.get_scale_entry("strength", 1.0)
    strength.set_increments(0.05, 0.25)
    strength.set_digits(2)
    dialog.fill(["strength", "output-mode", "server-url"])
    try:
        return dialog.run()
    finally:
        dialog.destroy()


def _error(procedure, message):
    return procedure.new_return_values(Gimp.PDBStatusType.EXECUTION_ERROR, GLib.Error(message))


def _kind(drawable):
    if isinstance(drawable, Gimp.LayerMask):
        return "layer-mask"
    if not isinstance(drawable, Gimp.Layer):
        return "channel"
    if drawable.is_group():
        return "group"
    return "text-layer" if drawable.is_text_layer() else "layer"


def _target_layer(drawables, mode):
    """The layer to retouch: the one selected, or the layer whose mask is selected."""
    drawable = drawables[protocol.choose_layer([_kind(d) for d in drawables], mode)]
    return Gimp.Layer.from_mask(drawable) if isinstance(drawable, Gimp.LayerMask) else drawable


class _Job:
    def __init__(self, region, fmt, babl_name, before, prepared):
        self.region = region        # protocol.Region in layer coordinates
        self.fmt = fmt              # protocol.WireFormat
        self.babl_name = babl_name  # fmt.babl, or the layer's own format with its colour space
        self.before = before        # the pixels read, in babl_name: what the summary compares with
        self.prepared = prepared    # protocol.Prepared


def _read_layer(image, layer):
    base = {Gimp.ImageBaseType.RGB: "rgb", Gimp.ImageBaseType.GRAY: "gray"}.get(
        image.get_base_type(), "indexed")
    fmt = protocol.wire_format(image.get_precision().value_name, base, layer.has_alpha())

    _, selected, x1, y1, x2, y2 = Gimp.Selection.bounds(image)
    _, off_x, off_y = layer.get_offsets()
    size = (layer.get_width(), layer.get_height())
    if protocol.selection_region((off_x, off_y), size, (x1, y1, x2, y2) if selected else None) is None:
        raise BadImageError(_("The selection does not touch the active layer: select part "
                              "of the layer, or Select ▸ None to retouch all of it"))
    # The whole layer travels, whatever the selection: the server finds the faces in it (a
    # selected cheek alone holds no face), and GIMP applies the result through the selection.
    region = protocol.Region(0, 0, *size)

    # A plain babl name such as "R'G'B'A u16" means sRGB primaries.  When the layer already
    # stores fmt.babl, use its own format's name, which carries its colour space ("...-<space>"):
    # no conversion at all, so every bit and any ICC profile's primaries survive the round trip.
    own = layer.get_format()
    babl_name = Babl.get_name(own) if Babl.format_get_encoding(own) == fmt.babl else fmt.babl
    rect = Gegl.Rectangle.new(region.x, region.y, region.width, region.height)
    pixels = bytes(layer.get_buffer().get(rect, 1.0, babl_name, Gegl.AbyssPolicy.NONE))
    return _Job(region, fmt, babl_name, pixels,
                protocol.encode_request(pixels, region.width, region.height, fmt))


def _retouch_off_main_thread(server, body, options):
    """HTTP runs in a worker thread; this (main) thread alone calls libgimp for progress."""
    events = queue.Queue()
    cancel = threading.Event()
    watchdog = Watchdog(server.url)

    def work():
        try:
            result = server.run_job(body, wire.MSGPACK_TYPE, options,
                                    on_progress=lambda f: events.put(("progress", f)),
                                    on_status=lambda status: events.put(("status", status)),
                                    on_job=watchdog.watch, cancel=cancel)
            events.put(("done", result))
        except Exception as err:  # typed or a bug: the main thread turns it into a sentence
            events.put(("error", err))

    Gimp.progress_init(protocol.SENDING_TEXT)
    shown = protocol.SENDING_TEXT
    worker = threading.Thread(target=work, name="autoretouch-http", daemon=True)
    worker.start()
    try:
        while True:
            try:
                kind, value = events.get(timeout=0.1)
            except queue.Empty:
                continue
            if kind == "progress":
                Gimp.progress_update(value)
            elif kind == "status":
                text = protocol.phase_text(value)
                if text != shown:
                    Gimp.progress_set_text(text)
                    shown = text
            elif kind == "done":
                return value
            else:
                raise value
    finally:
        cancel.set()
        worker.join(timeout=15)
        watchdog.close()
        Gimp.progress_end()


def _write_result(image, layer, job, pixels, mode, skin):
    region = job.region
    rect = Gegl.Rectangle.new(region.x, region.y, region.width, region.height)
    fmt = job.babl_name

    target = layer if mode == "in-place" else _raster_copy(image, layer)

    if mode in ("new-layer-mask", "new-layer-skin-mask"):
        # The layer mask does the blending, so the whole region goes in unblended and stays
        # editable.  The layer is new: its undo is the insertion.
        buffer = target.get_buffer()
        buffer.set(rect, fmt, pixels)
        buffer.flush()
        if mode == "new-layer-mask":  # from the selection, or white
            selected = not Gimp.Selection.is_empty(image)
            target.add_mask(target.create_mask(Gimp.AddMaskType.SELECTION if selected
                                               else Gimp.AddMaskType.WHITE))
        else:  # the skin the server retouched, for the retoucher to paint; masked elsewhere
            mask = target.create_mask(Gimp.AddMaskType.BLACK)
            target.add_mask(mask)
            mask_buffer = mask.get_buffer()
            mask_buffer.set(rect, protocol.mask_babl(job.fmt), skin)
            mask_buffer.flush()
            mask.update(region.x, region.y, region.width, region.height)
    else:
        # Shadow buffer + merge: GIMP composites through the selection (feathering included)
        # and pushes one undo step, exactly as its own filters do.
        shadow = target.get_shadow_buffer()
        shadow.set(rect, fmt, pixels)
        shadow.flush()
        target.merge_shadow(True)
    target.update(region.x, region.y, region.width, region.height)


def _raster_copy(image, layer):
    """A plain raster copy of ``layer`` (its pixels, opacity and mode) above it, named "AutoRetouch".

    Not ``layer.copy()``: a text layer's copy is a text layer, which writing pixels would turn
    into a raster layer behind the user's back."""
    copy = Gimp.Layer.new(image, LAYER_NAME, layer.get_width(), layer.get_height(), layer.type(),
                          layer.get_opacity(), layer.get_mode())
    _, off_x, off_y = layer.get_offsets()
    copy.set_offsets(off_x, off_y)
    image.insert_layer(copy, layer.get_parent(), image.get_item_position(layer))
    own = Babl.get_name(layer.get_format())
    rect = Gegl.Rectangle.new(0, 0, layer.get_width(), layer.get_height())
    buffer = copy.get_buffer()
    buffer.set(rect, own, layer.get_buffer().get(rect, 1.0, own, Gegl.AbyssPolicy.NONE))
    buffer.flush()
    return copy


MODE_HELP = {
    "new-layer": N_("A new layer above the source"),
    "new-layer-mask": N_("A new layer above the source, with a layer mask from the selection"),
    "in-place": N_("Change the layer itself (not a text layer: it would lose its text)"),
    "new-layer-skin-mask": N_("A new layer above the source whose layer mask is the skin the retouch "
                              "went through: paint it to keep or extend the edit"),
}


class AutoRetouch(Gimp.PlugIn):
    def do_set_i18n(self, procname):
        return False

    def do_query_procedures(self):
        # The help page ships beside this file (help/en/index.html, mapped by gimp-help.xml).
        help_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "help")
        self.set_help_domain(HELP_DOMAIN, Gio.File.new_for_path(help_dir))
        return [PROC_NAME]

    def do_create_procedure(self, name):
        Gegl.init(None)
        procedure = Gimp.ImageProcedure.new(self, name, Gimp.PDBProcType.PLUGIN,
                                            autoretouch_run, None)
        procedure.set_image_types("RGB*, GRAY*")
        # Several selected layers keep the menu item active, so the plug-in can say what to do
        # ("one layer at a time") instead of GIMP's misleading "only works on RGB, Grayscale".
        procedure.set_sensitivity_mask(Gimp.ProcedureSensitivityMask.DRAWABLE
                                       | Gimp.ProcedureSensitivityMask.DRAWABLES)
        # "_Antialias" holds A in Filters > Enhance; the dialog's title has no dots.
        procedure.set_menu_label(_("Au_toRetouch..."))
        procedure.add_menu_path("<Image>/Filters/Enhance")
        procedure.set_documentation(
            _("Retouch faces automatically (AutoRetouch server)"),
            _("Sends the active layer to a running AutoRetouch server (`autoretouch-server`), "
              "which retouches the skin of every face in it, and puts the result back at the "
              "image's precision, through the selection if there is one: as a new layer, a new "
              "layer with a mask from the selection or from the skin, or in place."),
            name)
        procedure.set_attribution("AutoRetouch", "AutoRetouch", "2026")

        # Mnemonics clear of the dialog's own buttons (_Save Settings, _OK, _Reset, _Help, _Cancel).
        procedure.add_double_argument("strength", _("S_trength"),
                                      _("How strongly to retouch: 0 = unchanged, 1 = as trained, "
                                        "up to 2 = exaggerated"),
                                      0.0, 2.0, 1.0, GObject.ParamFlags.READWRITE)
        modes = Gimp.Choice.new()
        for index, (mode, label) in enumerate(protocol.MODE_LABELS.items()):
            modes.add(mode, index, _(label), _(MODE_HELP[mode]))
        procedure.add_choice_argument("output-mode", _("Out_put"), _("Where the result goes"),
                                      modes, "new-layer", GObject.ParamFlags.READWRITE)
        procedure.add_string_argument("server-url", _("Server _URL"),
                                      _("Address of the AutoRetouch server"),
                                      wire.DEFAULT_URL, GObject.ParamFlags.READWRITE)
        return procedure


Gimp.main(AutoRetouch.__gtype__, sys.argv)
