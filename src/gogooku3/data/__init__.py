"""From the dataset to model inputs: validation, the splitter, normalisation, the correlation graph, PanelStore."""
