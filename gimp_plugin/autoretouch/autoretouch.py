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
import queue
import sys
import threading

import autoretouch_client as client
import autoretouch_protocol as protocol
import autoretouch_wire as wire
from autoretouch_errors import BadImageError
from autoretouch_watchdog import Watchdog

PROC_NAME = "plug-in-autoretouch"
LAYER_NAME = "AutoRetouch"


def N_(message): return message
def _(message): return GLib.dgettext(None, message)


def autoretouch_run(procedure, run_mode, image, drawables, config, data):
    if run_mode == Gimp.RunMode.INTERACTIVE:
        GimpUi.init(PROC_NAME)
        dialog = GimpUi.ProcedureDialog(procedure=procedure, config=config)
        dialog.fill(None)
        if not dialog.run():
            dialog.destroy()
            return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, GLib.Error())
        dialog.destroy()

    strength = config.get_property('strength')
    mode = config.get_property('output-mode')
    url = config.get_property('server-url')

    try:
        options = wire.RetouchOptions(strength=strength, mask=(mode == "new-layer-skin-mask"))
        server = client.Client(url)
        layer = _only_layer(drawables)
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
        return _error(procedure, protocol.user_message(err, url))

    # Everything that can fail for an outside reason has happened: now change the image.
    Gimp.context_push()
    image.undo_group_start()
    try:
        _write_result(image, layer, job, pixels, mode, mask)
    except Exception as err:  # a bug: say so rather than report success
        return _error(procedure, f"AutoRetouch could not write the result: {err!r}. "
                                 "Please report this; Edit ▸ Undo reverts any partial change.")
    finally:
        image.undo_group_end()
        Gimp.context_pop()
    Gimp.displays_flush()
    return procedure.new_return_values(Gimp.PDBStatusType.SUCCESS, GLib.Error())


def _error(procedure, message):
    return procedure.new_return_values(Gimp.PDBStatusType.EXECUTION_ERROR, GLib.Error(message))


def _only_layer(drawables):
    if len(drawables) != 1:
        raise BadImageError(_("AutoRetouch works on one layer at a time: select a single "
                              "layer in the Layers dialog"))
    layer = drawables[0]
    if not isinstance(layer, Gimp.Layer) or isinstance(layer, Gimp.LayerMask):
        raise BadImageError(_("AutoRetouch works on layers, not on channels or masks: "
                              "select a layer in the Layers dialog"))
    if layer.is_group():
        raise BadImageError(_("AutoRetouch cannot work on a layer group: select one of "
                              "its layers"))
    return layer


class _Job:
    def __init__(self, region, fmt, babl_name, prepared):
        self.region = region        # protocol.Region in layer coordinates
        self.fmt = fmt              # protocol.WireFormat
        self.babl_name = babl_name  # fmt.babl, or the layer's own format with its colour space
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
    pixels = layer.get_buffer().get(rect, 1.0, babl_name, Gegl.AbyssPolicy.NONE)
    return _Job(region, fmt, babl_name, protocol.encode_request(bytes(pixels), region.width,
                                                                region.height, fmt))


def _retouch_off_main_thread(server, body, options):
    """HTTP runs in a worker thread; this (main) thread alone calls libgimp for progress."""
    events = queue.Queue()
    cancel = threading.Event()
    watchdog = Watchdog(server.url)

    def work():
        try:
            result = server.run_job(body, wire.MSGPACK_TYPE, options,
                                    on_progress=lambda f: events.put(("progress", f)),
                                    on_job=watchdog.watch, cancel=cancel)
            events.put(("done", result))
        except Exception as err:  # typed or a bug: the main thread turns it into a sentence
            events.put(("error", err))

    Gimp.progress_init(_("AutoRetouch: retouching on the server…"))
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

    if mode == "in-place":
        target = layer
    else:
        target = layer.copy()
        target.set_name(LAYER_NAME)
        image.insert_layer(target, layer.get_parent(), image.get_item_position(layer))

    if mode in ("new-layer-mask", "new-layer-skin-mask"):
        # The layer mask does the blending, so the whole region goes in unblended and stays
        # editable.  The layer is new: its undo is the insertion.
        if target.get_mask() is not None:
            target.remove_mask(Gimp.MaskApplyMode.DISCARD)
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


class AutoRetouch(Gimp.PlugIn):
    def do_set_i18n(self, procname):
        return False

    def do_query_procedures(self):
        return [PROC_NAME]

    def do_create_procedure(self, name):
        Gegl.init(None)
        procedure = Gimp.ImageProcedure.new(self, name, Gimp.PDBProcType.PLUGIN,
                                            autoretouch_run, None)
        procedure.set_image_types("RGB*, GRAY*")
        procedure.set_sensitivity_mask(Gimp.ProcedureSensitivityMask.DRAWABLE)
        procedure.set_menu_label(_("_AutoRetouch..."))
        procedure.add_menu_path("<Image>/Filters/Enhance")
        procedure.set_documentation(
            _("Retouch faces automatically (AutoRetouch server)"),
            _("Sends the active layer to a running AutoRetouch server (`autoretouch-server`), "
              "which retouches the skin of every face in it, and puts the result back at the "
              "image's precision, through the selection if there is one: as a new layer, a new "
              "layer with a mask from the selection or from the skin, or in place."),
            name)
        procedure.set_attribution("AutoRetouch", "AutoRetouch", "2026")

        procedure.add_double_argument("strength", _("_Strength"),
                                      _("How strongly to retouch: 0 = unchanged, 1 = as trained, "
                                        "up to 2 = exaggerated"),
                                      0.0, 2.0, 1.0, GObject.ParamFlags.READWRITE)
        modes = Gimp.Choice.new()
        modes.add("new-layer", 0, _("New layer"), _("A new layer above the source"))
        modes.add("new-layer-mask", 1, _("New layer with mask"),
                  _("A new layer above the source, with a layer mask from the selection"))
        modes.add("in-place", 2, _("In place"), _("Change the layer itself"))
        modes.add("new-layer-skin-mask", 3, _("New layer with skin mask"),
                  _("A new layer above the source whose layer mask is the skin the retouch went through: "
                    "paint it to keep or extend the edit"))
        procedure.add_choice_argument("output-mode", _("_Output"), _("Where the result goes"),
                                      modes, "new-layer", GObject.ParamFlags.READWRITE)
        procedure.add_string_argument("server-url", _("Server _URL"),
                                      _("Address of the AutoRetouch server"),
                                      wire.DEFAULT_URL, GObject.ParamFlags.READWRITE)
        return procedure


Gimp.main(AutoRetouch.__gtype__, sys.argv)
