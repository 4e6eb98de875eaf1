"""mmue: Multimodal Unlearnable Examples (MEM, EM, UAP) reproduced on open_clip."""
import warnings

# Dependencies import `tqdm.auto`, which warns in notebooks without ipywidgets; mmue's own bars are plain text.
warnings.filterwarnings("ignore", message="IProgress not found", module="tqdm")
