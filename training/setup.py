from setuptools import find_packages, setup

package_name = 'mmdistill_training'

setup(
    name=package_name,
    version='0.1.0',
    packages=find_packages(exclude=['test']),
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml']),
    ],
    install_requires=['setuptools'],
    zip_safe=True,
    maintainer='mmdistill maintainers',
    maintainer_email='maintainers@mmdistill.dev',
    description='Offline side of mmdistill: datasets, losses, trainer, evaluation and the mmdistill CLI.',
    license='Apache-2.0',
    entry_points={
        'console_scripts': [
            'mmdistill = mmdistill_training.cli:main',
        ],
    },
)
