// CogVideoX Studio's page script: what Gradio's components do not do by themselves.

// A folder upload sends each file by its name alone. Keep where each file was inside the
// folder the user picked, so the Dataset tab keeps its sub-folders; the folder upload's event
// reads (and clears) this list when it sends the files.
document.addEventListener(
  "change",
  (event) => {
    const input = event.target;
    if (input instanceof HTMLInputElement && input.type === "file" && input.webkitdirectory) {
      window.studioFolderPaths = Array.from(
        input.files,
        (file) => file.webkitRelativePath || file.name,
      );
    }
  },
  true,
);
