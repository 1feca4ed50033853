"""What 3D Slicer's OpenIGTLinkIF does, for the web app's scene: OpenIGTLink messages written into nodes in place.

A ``pyigtl`` client; :meth:`IgtlNodeReceiver.update` (on the app's event loop, the thread that owns the scene)
takes the latest message of each device and updates one scalar volume (IMAGE ``Image``), one labelmap (IMAGE
``Gland``, a segmentation streamed with the frame) and the linear transform above both (TRANSFORM
``ImageToReference``, read as RAS as OpenIGTLinkIF reads it) in place, as OpenIGTLinkIF updates its nodes. The
Slicer module's live tracking then reads the frame node exactly as it would in Slicer.
"""

from __future__ import annotations

import numpy as np

import slicer
from MetaRegistrationLib.geometry import LPS_TO_RAS
from MetaRegistrationLib.igtl import SimulatedProbe
from MetaRegistrationSlicer import conversions


class IgtlNodeReceiver:
    """A ``pyigtl`` client on ``host:port`` whose messages update :attr:`frameNode`, :attr:`glandNode` and
    :attr:`transformNode` (created hidden in ``scene``) in place."""

    def __init__(self, scene, host: str, port: int):
        import pyigtl

        self.client = pyigtl.OpenIGTLinkClient(host, port, start_now=True)
        self.transformNode = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", SimulatedProbe.TRANSFORM_DEVICE)
        self.frameNode = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "Image_Reference")
        self.glandNode = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "Gland_Reference")
        self._images = {SimulatedProbe.IMAGE_DEVICE: self.frameNode, SimulatedProbe.GLAND_DEVICE: self.glandNode}
        for node in (self.transformNode, *self._images.values()):
            node.SetHideFromEditors(True)
        for node in self._images.values():
            node.SetAndObserveTransformNodeID(self.transformNode.GetID())

    @property
    def nodes(self) -> tuple:
        return self.transformNode, self.frameNode, self.glandNode

    def update(self) -> int:
        """Apply the messages received since the last call (transforms first); returns how many."""
        messages = self.client.get_latest_messages()
        for message in sorted(messages, key=lambda m: m.message_type != "TRANSFORM"):
            if message.message_type == "TRANSFORM" and message.device_name == SimulatedProbe.TRANSFORM_DEVICE:
                self.transformNode.SetMatrixTransformToParent(conversions.matrixFromArray(message.matrix))
            elif message.message_type == "IMAGE" and message.device_name in self._images:
                self._updateImage(self._images[message.device_name], message)
        return len(messages)

    @staticmethod
    def _updateImage(node, message) -> None:
        pixels = np.asarray(message.image)
        pixels = pixels[..., 0] if pixels.ndim == 4 and pixels.shape[-1] == 1 else pixels
        ijkToWorld = np.asarray(message.ijk_to_world_matrix, dtype=float)
        ijkToRas = ijkToWorld if message.world_coordinate_system == "ras" else LPS_TO_RAS @ ijkToWorld
        node.SetIJKToRASMatrix(conversions.matrixFromArray(ijkToRas))
        image = node.GetImageData()
        if image is None or tuple(reversed(image.GetDimensions())) != pixels.shape:
            slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(pixels))
        else:
            slicer.util.arrayFromVolume(node)[:] = pixels
            slicer.util.arrayFromVolumeModified(node)

    def stop(self) -> None:
        self.client.stop()
