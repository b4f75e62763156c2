//! The IOMMU side: Arm SMMUv3 encodings, the software SMMU model, the driver and SVA binding.
