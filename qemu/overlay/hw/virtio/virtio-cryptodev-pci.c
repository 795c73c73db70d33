/*
 * virtio-cryptodev PCI proxy
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "hw/virtio/virtio-pci.h"
#include "hw/virtio/virtio-cryptodev.h"
#include "hw/qdev-properties.h"
#include "qapi/error.h"
#include "qemu/module.h"
#include "qom/object.h"

typedef struct VirtIOCryptodevPCI VirtIOCryptodevPCI;

#define TYPE_VIRTIO_CRYPTODEV_PCI "virtio-cryptodev-pci-base"
DECLARE_INSTANCE_CHECKER(VirtIOCryptodevPCI, VIRTIO_CRYPTODEV_PCI,
                         TYPE_VIRTIO_CRYPTODEV_PCI)

struct VirtIOCryptodevPCI {
    VirtIOPCIProxy parent_obj;
    VirtIOCryptodev vdev;
};

static Property virtio_cryptodev_pci_properties[] = {
    DEFINE_PROP_BIT("ioeventfd", VirtIOPCIProxy, flags,
                    VIRTIO_PCI_FLAG_USE_IOEVENTFD_BIT, true),
    DEFINE_PROP_UINT32("vectors", VirtIOPCIProxy, nvectors,
                       DEV_NVECTORS_UNSPECIFIED),
    DEFINE_PROP_END_OF_LIST(),
};

static void virtio_cryptodev_pci_realize(VirtIOPCIProxy *vpci_dev,
                                         Error **errp)
{
    VirtIOCryptodevPCI *vcd = VIRTIO_CRYPTODEV_PCI(vpci_dev);
    DeviceState *vdev = DEVICE(&vcd->vdev);

    if (vpci_dev->nvectors == DEV_NVECTORS_UNSPECIFIED) {
        vpci_dev->nvectors = 2;
    }
    /*
     * Modern only: the PCI device id is then 0x1040 + 63 = 0x107f and the
     * guest must negotiate VIRTIO_F_VERSION_1 (little-endian fields).
     */
    virtio_pci_force_virtio_1(vpci_dev);
    qdev_realize(vdev, BUS(&vpci_dev->bus), errp);
}

static void virtio_cryptodev_pci_class_init(ObjectClass *klass, void *data)
{
    DeviceClass *dc = DEVICE_CLASS(klass);
    VirtioPCIClass *k = VIRTIO_PCI_CLASS(klass);
    PCIDeviceClass *pcidev_k = PCI_DEVICE_CLASS(klass);

    k->realize = virtio_cryptodev_pci_realize;
    set_bit(DEVICE_CATEGORY_MISC, dc->categories);
    pcidev_k->vendor_id = PCI_VENDOR_ID_REDHAT_QUMRANET;
    pcidev_k->device_id = VIRTIO_CRYPTODEV_PCI_DEVICE_ID;
    pcidev_k->revision = VIRTIO_PCI_ABI_VERSION;
    pcidev_k->class_id = PCI_CLASS_OTHERS;
    device_class_set_props(dc, virtio_cryptodev_pci_properties);
}

static void virtio_cryptodev_pci_instance_init(Object *obj)
{
    VirtIOCryptodevPCI *dev = VIRTIO_CRYPTODEV_PCI(obj);

    virtio_instance_init_common(obj, &dev->vdev, sizeof(dev->vdev),
                                TYPE_VIRTIO_CRYPTODEV);
}

static const VirtioPCIDeviceTypeInfo virtio_cryptodev_pci_info = {
    .base_name     = TYPE_VIRTIO_CRYPTODEV_PCI,
    .generic_name  = "virtio-cryptodev-pci",
    .instance_size = sizeof(VirtIOCryptodevPCI),
    .instance_init = virtio_cryptodev_pci_instance_init,
    .class_init    = virtio_cryptodev_pci_class_init,
};

static void virtio_cryptodev_pci_register(void)
{
    virtio_pci_types_register(&virtio_cryptodev_pci_info);
}

type_init(virtio_cryptodev_pci_register)
